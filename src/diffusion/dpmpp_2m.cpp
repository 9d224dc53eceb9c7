#include "diffusion/dpmpp_2m.h"

#include <torch/torch.h>

namespace kiln {
namespace {

// VP coefficients of a σ: α = 1/√(σ²+1), σ_t = σ·α, λ = log α − log σ_t.
struct Coefficients {
  torch::Tensor alpha, sigma, lambda;
};

Coefficients coefficients(const torch::Tensor& sigma) {
  auto alpha = 1 / (sigma.pow(2) + 1).pow(0.5);
  auto sigma_t = sigma * alpha;
  return {alpha, sigma_t, alpha.log() - sigma_t.log()};
}

}  // namespace

DPMPP2MSampler::DPMPP2MSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing,
                               bool karras) {
  const auto train = schedule.train_sigmas();
  std::vector<double> t;
  for (double x : spaced_timesteps(schedule.config, steps, spacing, true)) t.push_back(round_half_even(x));
  std::vector<double> sigmas;
  if (karras) {
    sigmas = karras_sigmas(std::vector<double>(train.begin(), train.end()), steps);
    t.clear();
    for (double s : sigmas) t.push_back(round_half_even(sigma_to_timestep(s, train)));
  } else {
    sigmas = interpolate_sigmas(train, t);
  }
  timesteps_ = t;
  std::vector<float> table(sigmas.begin(), sigmas.end());
  table.push_back(0.0f);
  sigmas_ = torch::tensor(table, torch::kFloat32);
}

torch::Tensor DPMPP2MSampler::step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                                   const torch::Tensor&) {
  const auto index = static_cast<int64_t>(i);
  const auto s0 = coefficients(sigmas_[index]);
  const auto target = coefficients(sigmas_[index + 1]);
  auto x0 = (x - s0.sigma * eps) / s0.alpha;  // data prediction
  auto h = target.lambda - s0.lambda;
  auto decay = target.alpha * (torch::exp(-h) - 1.0);
  // First order on the first step and on the last (final σ is 0), second order in between.
  const bool last = index == static_cast<int64_t>(steps()) - 1;
  torch::Tensor out;
  if (lower_order_steps_ < 1 || last) {
    out = (target.sigma / s0.sigma) * x - decay * x0;
  } else {
    const auto s1 = coefficients(sigmas_[index - 1]);
    auto r0 = (s0.lambda - s1.lambda) / h;
    auto d1 = (1.0 / r0) * (x0 - previous_x0_);
    out = (target.sigma / s0.sigma) * x - decay * x0 - 0.5 * decay * d1;
  }
  previous_x0_ = x0;
  lower_order_steps_ = std::min<int64_t>(lower_order_steps_ + 1, 2);
  return out;
}

}  // namespace kiln
