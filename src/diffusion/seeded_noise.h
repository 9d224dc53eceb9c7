// Gaussian noise that means the same as in the Python tools: each image of a batch has its own torch
// CPU generator (mt19937 + Box–Muller exactly as torch.randn), seeded seed, seed + 1, …, and every
// draw — the initial latents first, then each ancestral step's noise — comes from that stream. With
// one image this is diffusers' `generator=torch.Generator("cpu").manual_seed(seed)`, and the initial
// latent equals A1111's with its RNG source set to CPU.
#pragma once
#include <ATen/core/Generator.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace kiln {

class SeededNoise {
 public:
  SeededNoise(uint64_t first_seed, int64_t batch);
  // [batch, shape...]: image b's slice drawn from generator b (float32 on the CPU).
  torch::Tensor randn(torch::IntArrayRef per_image_shape);
  uint64_t seed(int64_t image) const { return first_seed_ + static_cast<uint64_t>(image); }
  int64_t batch() const { return static_cast<int64_t>(generators_.size()); }

 private:
  uint64_t first_seed_;
  std::vector<at::Generator> generators_;
};

}  // namespace kiln
