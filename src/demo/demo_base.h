// The demo's base model: a tiny SD-shaped model (the golden test architecture: 3-layer CLIP text
// encoder, 4-level UNet, 4-level VAE) that kiln trains itself in the synthetic world, since a model
// with random weights draws nothing a burn could show on. Two stages: the VAE learns to
// reconstruct the world's pictures (its latent scale normalised to SD's 0.18215), then the text
// encoder and the UNet learn the world from scratch with `kiln train`, captions and all.
#pragma once
#include <cstdint>
#include <filesystem>
#include <ostream>

#include "demo/demo_world.h"

namespace kiln {

struct DemoBaseOptions {
  int64_t vae_steps = 3000;  // batches of 32x32 crops
  int64_t epochs = 120;     // text encoder + UNet over the plain pictures
  int64_t batch_size = 16;
  double lr = 1e-3;         // both parts, AdamW, cosine after a short warm-up
  uint64_t seed = 1;
};

// Trains the base model in `world` and writes it as a diffusers folder (fp32, with its configs,
// so no --config is needed) at `out`, atomically. Scratch files go to `work_dir`.
void train_demo_base(const DemoWorld& world, const std::filesystem::path& work_dir,
                     const std::filesystem::path& out, const DemoBaseOptions& options, std::ostream* console);

}  // namespace kiln
