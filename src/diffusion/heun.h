// Heun's second-order method over σ (k-diffusion sample_heun, s_churn = 0), as diffusers'
// HeunDiscreteScheduler: two model calls per step except the last, which is an Euler step to σ = 0.
// Like diffusers, the timestep table lists every model call (2N − 1 of them) and step() alternates
// between the Euler predictor and the trapezoidal corrector.
#pragma once
#include "diffusion/sampler.h"

namespace kiln {

class HeunSampler : public Sampler {
 public:
  HeunSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing, bool karras);
  double init_noise_sigma() const override { return init_noise_sigma_; }
  torch::Tensor scale_model_input(const torch::Tensor& x, size_t i) const override;
  torch::Tensor step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                     const torch::Tensor& noise) override;
  // σ per model call plus the final 0: σ0, σ1, σ1, σ2, σ2, …, σN−1, σN−1, 0 (float32).
  const torch::Tensor& sigmas() const { return sigmas_; }

 private:
  torch::Tensor sigmas_;
  double init_noise_sigma_ = 1.0;
  // The predictor's state, consumed by the corrector that follows it.
  torch::Tensor predictor_start_, predictor_derivative_;
};

}  // namespace kiln
