#include "diffusion/seeded_noise.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

namespace kiln {

SeededNoise::SeededNoise(uint64_t first_seed, int64_t batch) : first_seed_(first_seed) {
  for (int64_t b = 0; b < batch; ++b) generators_.push_back(at::detail::createCPUGenerator(seed(b)));
}

torch::Tensor SeededNoise::randn(torch::IntArrayRef per_image_shape) {
  std::vector<int64_t> shape{1};
  shape.insert(shape.end(), per_image_shape.begin(), per_image_shape.end());
  std::vector<torch::Tensor> parts;
  for (auto& generator : generators_)
    parts.push_back(torch::randn(shape, generator, torch::TensorOptions().dtype(torch::kFloat32)));
  return torch::cat(parts);
}

}  // namespace kiln
