#include "diffusion/euler_ancestral.h"

#include <torch/torch.h>

namespace kiln {

torch::Tensor EulerAncestralSampler::step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                                          const torch::Tensor& noise) {
  TORCH_CHECK(noise.defined() && noise.sizes() == x.sizes(),
              "Euler ancestral needs noise shaped like the latents");
  auto sigma_from = sigmas_[static_cast<int64_t>(i)], sigma_to = sigmas_[static_cast<int64_t>(i) + 1];
  auto sigma_up = (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
  auto sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);
  auto x0 = x - sigma_from * eps;
  auto derivative = (x - x0) / sigma_from;
  auto dt = sigma_down - sigma_from;
  return x + derivative * dt + noise * sigma_up;
}

}  // namespace kiln
