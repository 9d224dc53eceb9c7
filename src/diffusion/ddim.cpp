#include "diffusion/ddim.h"

#include <torch/torch.h>

#include <cmath>

namespace kiln {

DDIMSampler::DDIMSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing)
    : alphas_cumprod_(schedule.alphas_cumprod), step_ratio_(schedule.config.num_train_timesteps / steps) {
  for (double t : spaced_timesteps(schedule.config, steps, spacing, false))
    timesteps_.push_back(round_half_even(t));
}

double DDIMSampler::model_sigma(size_t i) const {
  const double alpha = alphas_cumprod_[static_cast<int64_t>(timesteps_[i])].item<double>();
  return std::sqrt((1 - alpha) / alpha);
}

torch::Tensor DDIMSampler::step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                                const torch::Tensor&) {
  const auto t = static_cast<int64_t>(timesteps_[i]);
  const int64_t prev = t - step_ratio_;
  // set_alpha_to_one = false: the last step lands on ᾱ_0, not 1.
  auto alpha_t = alphas_cumprod_[t];
  auto alpha_prev = prev >= 0 ? alphas_cumprod_[prev] : alphas_cumprod_[0];
  auto beta_t = 1 - alpha_t;
  auto x0 = (x - beta_t.pow(0.5) * eps) / alpha_t.pow(0.5);
  auto direction = (1 - alpha_prev).pow(0.5) * eps;
  return alpha_prev.pow(0.5) * x0 + direction;
}

}  // namespace kiln
