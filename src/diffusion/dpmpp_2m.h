// DPM-Solver++(2M) (Lu et al. 2022), as diffusers' DPMSolverMultistepScheduler with
// algorithm_type dpmsolver++, solver_order 2, final σ 0 and a first-order last step; A1111's
// "DPM++ 2M" (and "DPM++ 2M Karras" with Karras σ).
#pragma once
#include "diffusion/sampler.h"

namespace kiln {

class DPMPP2MSampler : public Sampler {
 public:
  DPMPP2MSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing, bool karras);
  torch::Tensor step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                     const torch::Tensor& noise) override;
  const torch::Tensor& sigmas() const { return sigmas_; }
  double model_sigma(size_t i) const override { return sigmas_[static_cast<int64_t>(i)].item<double>(); }

 private:
  torch::Tensor sigmas_;       // [steps + 1] float32, last 0
  torch::Tensor previous_x0_;  // the data prediction of the previous step (multistep memory)
  int64_t lower_order_steps_ = 0;
};

}  // namespace kiln
