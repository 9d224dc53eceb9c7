#include "diffusion/heun.h"

#include <torch/torch.h>

#include "diffusion/euler.h"

namespace kiln {

HeunSampler::HeunSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing, bool karras) {
  // Same σ and timestep tables as Euler, each interior entry visited twice.
  const EulerSampler euler(schedule, steps, spacing, karras);
  init_noise_sigma_ = euler.init_noise_sigma();
  const auto& t = euler.timesteps();
  timesteps_.push_back(t.front());
  for (size_t i = 1; i < t.size(); ++i) timesteps_.insert(timesteps_.end(), {t[i], t[i]});
  const auto& s = euler.sigmas();
  const int64_t n = s.size(0);
  sigmas_ = torch::cat({s.slice(0, 0, 1), s.slice(0, 1, n - 1).repeat_interleave(2), s.slice(0, n - 1)});
}

torch::Tensor HeunSampler::scale_model_input(const torch::Tensor& x, size_t i) const {
  return x / (sigmas_[static_cast<int64_t>(i)].pow(2) + 1).pow(0.5);
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
