#include "diffusion/euler.h"

#include <torch/torch.h>

namespace kiln {

EulerSampler::EulerSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing,
                           bool karras) {
  const auto train = schedule.train_sigmas();
  std::vector<double> t;
  for (double x : spaced_timesteps(schedule.config, steps, spacing, false))
    t.push_back(static_cast<float>(x));
  auto sigmas = interpolate_sigmas(train, t);
  if (karras) {
    sigmas = karras_sigmas(sigmas, steps);
    t.clear();
    for (double s : sigmas) t.push_back(static_cast<float>(sigma_to_timestep(s, train)));
  }
  timesteps_ = t;
  std::vector<float> table(sigmas.begin(), sigmas.end());
  table.push_back(0.0f);
  sigmas_ = torch::tensor(table, torch::kFloat32);
  const float max_sigma = sigmas_.max().item<float>();
  // diffusers: σ_max for linspace/trailing spacing, √(σ_max² + 1) for leading.
  init_noise_sigma_ = spacing == TimestepSpacing::Leading
                          ? std::sqrt(static_cast<float>(max_sigma * max_sigma + 1.0f))
                          : max_sigma;
}

torch::Tensor EulerSampler::scale_model_input(const torch::Tensor& x, size_t i) const {
  return x / (sigmas_[static_cast<int64_t>(i)].pow(2) + 1).pow(0.5);
}

torch::Tensor EulerSampler::step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                                 const torch::Tensor&) {
  auto sigma = sigmas_[static_cast<int64_t>(i)];
  auto x0 = x - sigma * eps;
  auto derivative = (x - x0) / sigma;
  auto dt = sigmas_[static_cast<int64_t>(i) + 1] - sigma;
  return x + derivative * dt;
}

}  // namespace kiln
