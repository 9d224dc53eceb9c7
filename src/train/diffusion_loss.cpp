#include "train/diffusion_loss.h"

#include <torch/torch.h>

#include "util/error.h"

namespace kiln {

namespace {
// ᾱ_t per sample, shaped [B, 1, 1, 1] to broadcast over latents.
torch::Tensor alpha_bar(const NoiseSchedule& schedule, const torch::Tensor& timesteps, int64_t dims) {
  // The schedule's table lives on the CPU; the coefficients go where the latents are.
  auto a = schedule.alphas_cumprod.index_select(0, timesteps.to(torch::kCPU, torch::kLong).flatten())
               .to(timesteps.device());
  std::vector<int64_t> shape(static_cast<size_t>(dims), 1);
  shape[0] = a.size(0);
  return a.reshape(shape);
}
}  // namespace

torch::Tensor add_noise(const NoiseSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& noise,
                        const torch::Tensor& timesteps) {
  const auto a = alpha_bar(schedule, timesteps, x0.dim()).to(x0.dtype());
  return a.pow(0.5) * x0 + (1 - a).pow(0.5) * noise;
}

torch::Tensor velocity(const NoiseSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& noise,
                       const torch::Tensor& timesteps) {
  const auto a = alpha_bar(schedule, timesteps, x0.dim()).to(x0.dtype());
  return a.pow(0.5) * noise - (1 - a).pow(0.5) * x0;
}

torch::Tensor signal_to_noise(const NoiseSchedule& schedule, const torch::Tensor& timesteps) {
  const auto a = schedule.alphas_cumprod.index_select(0, timesteps.to(torch::kCPU, torch::kLong).flatten())
                     .to(timesteps.device());
  return a / (1 - a);
}

torch::Tensor training_target(const NoiseSchedule& schedule, Prediction prediction, const torch::Tensor& x0,
                              const torch::Tensor& noise, const torch::Tensor& timesteps) {
  return prediction == Prediction::Epsilon ? noise : velocity(schedule, x0, noise, timesteps);
}

torch::Tensor diffusion_loss(const NoiseSchedule& schedule, const torch::Tensor& prediction,
                             const torch::Tensor& target, const torch::Tensor& timesteps,
                             const LossOptions& options) {
  const auto pred = prediction.to(torch::kFloat32), want = target.to(torch::kFloat32);
  if (options.min_snr_gamma <= 0) return torch::mse_loss(pred, want);
  const auto snr = signal_to_noise(schedule, timesteps);
  auto weight = torch::clamp_max(snr, options.min_snr_gamma);
  weight = options.prediction == Prediction::Epsilon ? weight / snr : weight / (snr + 1);
  const auto per_sample = (pred - want).pow(2).flatten(1).mean(1);
  return (per_sample * weight).mean();
}

}  // namespace kiln
