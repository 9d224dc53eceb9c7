// The interface every sampler implements: a fixed table of timesteps (what the UNet is given),
// the input scaling, and one update of the latents from the (guided) noise prediction.
#pragma once
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "diffusion/noise_schedule.h"

namespace kiln {

class Sampler {
 public:
  virtual ~Sampler() = default;
  // The value handed to the UNet at each step (integers for DDIM/DPM-Solver, fractions for Euler).
  const std::vector<double>& timesteps() const { return timesteps_; }
  size_t steps() const { return timesteps_.size(); }
  // Scale of the initial noise: latents start as noise * init_noise_sigma().
  virtual double init_noise_sigma() const { return 1.0; }
  // The UNet input for latents `x` at step `i` (σ-parameterised samplers divide by √(σ²+1)).
  virtual torch::Tensor scale_model_input(const torch::Tensor& x, size_t i) const { return x; }
  // The noise level σ = √((1 − ᾱ)/ᾱ) of model call `i` (k-diffusion's σ): what turns a v
  // prediction into ε (diffusion/prediction.h).
  virtual double model_sigma(size_t i) const = 0;
  // Whether step() consumes fresh noise (ancestral samplers).
  virtual bool uses_noise() const { return false; }
  // Latents after step `i` given the noise prediction `eps` for latents `x`; `noise` is used only by
  // ancestral samplers (same shape as x).
  virtual torch::Tensor step(const torch::Tensor& eps, size_t i, const torch::Tensor& x,
                             const torch::Tensor& noise = {}) = 0;

 protected:
  std::vector<double> timesteps_;
};

struct SamplerOptions {
  int64_t steps = 20;
  // Empty: the spacing diffusers resolves from SD 1.5's config (DDIM leading, the others linspace).
  std::string spacing;
  bool karras = false;  // Karras σ spacing (Euler family and DPM++); the _karras names set it
};

// The names make_sampler knows, for help texts and errors.
std::vector<std::string> sampler_names();
// ddim, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras; an unknown name throws kiln::Error
// listing them. Heun calls the model twice per step: its timesteps() has 2N − 1 entries.
std::unique_ptr<Sampler> make_sampler(const std::string& name, const NoiseSchedule& schedule,
                                      SamplerOptions options);

}  // namespace kiln
