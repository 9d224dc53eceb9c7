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
#include "train/run_config.h"

namespace kiln {

struct DemoBaseOptions {
  int64_t vae_steps = 6000;  // batches of 32x32 crops
  int64_t epochs = 60;      // text encoder + UNet over the plain pictures
  int64_t batch_size = 16;
  double lr = 1e-3;         // both parts, AdamW, cosine after a short warm-up
  // The base is the weights' moving average (0: the raw weights): a small diffusion model trained
  // briefly draws far cleaner pictures from its average (Karras et al. 2022, "Elucidating the design
  // space of diffusion-based generative models", section 5).
  double ema_decay = 0.999;
  int64_t checkpoint_every = 5;  // epochs between resumable saves (0: only the end)
  uint64_t seed = 1;
};

// Trains the base model in `world` and writes it as a diffusers folder (fp32, with its configs,
// so no --config is needed) at `out`, atomically. Scratch files go to `work_dir`; an interrupted
// training (Ctrl-C, a killed process) resumes from its last save there when called again.
// The `kiln train` settings of stage 2 (text encoder and UNet from `init`, the VAE-trained model).
RunConfig demo_base_run_config(const DemoWorld& world, const std::filesystem::path& init,
                               const DemoBaseOptions& options);

void train_demo_base(const DemoWorld& world, const std::filesystem::path& work_dir,
                     const std::filesystem::path& out, const DemoBaseOptions& options, std::ostream* console);

}  // namespace kiln
