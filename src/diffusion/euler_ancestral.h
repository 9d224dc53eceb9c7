// Euler ancestral (k-diffusion sample_euler_ancestral, η = 1): an Euler step to σ_down, then fresh
// noise of size σ_up, as diffusers' EulerAncestralDiscreteScheduler and A1111's "Euler a".
#pragma once
#include "diffusion/euler.h"

namespace kiln {

class EulerAncestralSampler : public EulerSampler {
 public:
  EulerAncestralSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing, bool karras)
      : EulerSampler(schedule, steps, spacing, karras) {}
  bool uses_noise() const override { return true; }
  torch::Tensor step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                     const torch::Tensor& noise) override;
};

}  // namespace kiln
