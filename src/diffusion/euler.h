// Euler (k-diffusion sample_euler, s_churn = 0) over σ, as diffusers' EulerDiscreteScheduler.
#pragma once
#include "diffusion/sampler.h"

namespace kiln {

class EulerSampler : public Sampler {
 public:
  EulerSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing, bool karras);
  double init_noise_sigma() const override { return init_noise_sigma_; }
  torch::Tensor scale_model_input(const torch::Tensor& x, size_t i) const override;
  double model_sigma(size_t i) const override { return sigmas_[static_cast<int64_t>(i)].item<double>(); }
  torch::Tensor step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                     const torch::Tensor& noise) override;
  // σ per step plus the final 0 (float32, as diffusers keeps them).
  const torch::Tensor& sigmas() const { return sigmas_; }

 protected:
  torch::Tensor sigmas_;  // [steps + 1] float32
  double init_noise_sigma_ = 1.0;
};

}  // namespace kiln
