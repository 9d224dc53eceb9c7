// DDIM with η = 0 (deterministic), as diffusers' DDIMScheduler with SD 1.5's config.
#pragma once
#include "diffusion/sampler.h"

namespace kiln {

class DDIMSampler : public Sampler {
 public:
  DDIMSampler(const NoiseSchedule& schedule, int64_t steps, TimestepSpacing spacing);
  torch::Tensor step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                     const torch::Tensor& noise) override;
  double model_sigma(size_t i) const override;

 private:
  torch::Tensor alphas_cumprod_;
  int64_t step_ratio_;  // diffusers steps back by T / N whatever the spacing
};

}  // namespace kiln
