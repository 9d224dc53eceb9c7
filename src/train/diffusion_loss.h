// The SD 1.x training objective (specs §4): noise the latents at random timesteps, predict ε or v,
// mean-squared error with optional min-SNR-γ weighting. Everything random is passed in, so the
// caller decides where the noise comes from (a run's own generator: see training_noise.h).
#pragma once
#include <torch/types.h>

#include <string>

#include "diffusion/noise_schedule.h"
#include "diffusion/prediction.h"

namespace kiln {

// x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, per-sample t (diffusers DDPMScheduler.add_noise, float32).
torch::Tensor add_noise(const NoiseSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& noise,
                        const torch::Tensor& timesteps);
// v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (diffusers get_velocity).
torch::Tensor velocity(const NoiseSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& noise,
                       const torch::Tensor& timesteps);
// SNR_t = ᾱ_t / (1 − ᾱ_t), float32 [B].
torch::Tensor signal_to_noise(const NoiseSchedule& schedule, const torch::Tensor& timesteps);

struct LossOptions {
  Prediction prediction = Prediction::Epsilon;
  double min_snr_gamma = 0.0;  // 0: off; 5 is the paper's recommendation
};

// mean over everything (F.mse_loss), or with min-SNR-γ: mean_b[w_b · mean_chw (pred − target)²].
torch::Tensor diffusion_loss(const NoiseSchedule& schedule, const torch::Tensor& prediction,
                             const torch::Tensor& target, const torch::Tensor& timesteps,
                             const LossOptions& options);

// The regression target for `options.prediction`.
torch::Tensor training_target(const NoiseSchedule& schedule, Prediction prediction, const torch::Tensor& x0,
                              const torch::Tensor& noise, const torch::Tensor& timesteps);

}  // namespace kiln
