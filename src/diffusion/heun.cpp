#include "diffusion/heun.h"

#include <torch/torch.h>

namespace kiln {

HeunSampler::HeunSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing, bool karras)
    : EulerSampler(schedule, steps, spacing, karras) {
  const auto euler_timesteps = timesteps_;
  timesteps_ = {euler_timesteps.front()};
  for (size_t i = 1; i < euler_timesteps.size(); ++i)
    timesteps_.insert(timesteps_.end(), {euler_timesteps[i], euler_timesteps[i]});
  const int64_t n = sigmas_.size(0);
  sigmas_ = torch::cat(
      {sigmas_.slice(0, 0, 1), sigmas_.slice(0, 1, n - 1).repeat_interleave(2), sigmas_.slice(0, n - 1)});
}

torch::Tensor HeunSampler::step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                                const torch::Tensor&) {
  const auto at = static_cast<int64_t>(i);
  if (!predictor_start_.defined()) {
    // Predictor: an Euler step from σ_i to the next σ; its slope is kept for the corrector.
    auto sigma = sigmas_[at], sigma_next = sigmas_[at + 1];
    auto derivative = (x - (x - sigma * eps)) / sigma;
    auto dt = sigma_next - sigma;
    if (at + 2 < sigmas_.size(0)) {
      predictor_start_ = x;
      predictor_derivative_ = derivative;
    }
    return x + derivative * dt;
  }
  // Corrector: the model was evaluated at the predicted point; average the two slopes and redo the
  // step from where the predictor started.
  auto sigma = sigmas_[at - 1], sigma_next = sigmas_[at];
  auto derivative = (x - (x - sigma_next * eps)) / sigma_next;
  derivative = (predictor_derivative_ + derivative) / 2;
  auto start = predictor_start_;
  predictor_start_ = torch::Tensor();
  predictor_derivative_ = torch::Tensor();
  return start + derivative * (sigma_next - sigma);
}

}  // namespace kiln
