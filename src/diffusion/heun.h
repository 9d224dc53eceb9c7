// Heun's second-order method over σ (k-diffusion sample_heun, s_churn = 0), as diffusers'
// HeunDiscreteScheduler: two model calls per step except the last, which is an Euler step to σ = 0.
// Like diffusers, the timestep table lists every model call (2N − 1 of them) and step() alternates
// between the Euler predictor and the trapezoidal corrector.
#pragma once
#include "diffusion/euler.h"

namespace kiln {

// Euler's σ and timestep tables with every interior entry repeated: σ0, σ1, σ1, …, σN−1, σN−1, 0.
// Input scaling is Euler's; only the update differs.
class HeunSampler : public EulerSampler {
 public:
  HeunSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing, bool karras);
  torch::Tensor step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                     const torch::Tensor& noise) override;

 private:
  // The predictor's state, consumed by the corrector that follows it.
  torch::Tensor predictor_start_, predictor_derivative_;
};

}  // namespace kiln
