// The SD 1.x noise schedule (scaled_linear betas over 1000 training steps) and the timestep and
// sigma tables the samplers walk, computed as diffusers 0.30 computes them.
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

#include "diffusion/prediction.h"

namespace kiln {

enum class TimestepSpacing { Leading, Trailing, Linspace };
TimestepSpacing parse_spacing(const std::string& name);  // "leading" | "trailing" | "linspace"

// A model's scheduler config (diffusers' scheduler/scheduler_config.json), SD 1.5's by default.
struct NoiseScheduleConfig {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.00085;
  double beta_end = 0.012;
  int64_t steps_offset = 1;  // added to "leading" timesteps
  // Empty: the config does not say, and each sampler takes its diffusers class default (DDIM
  // leading, the others linspace); stated, every sampler uses it, as diffusers' from_config does.
  std::string timestep_spacing;
  Prediction prediction = Prediction::Epsilon;
};

// Float32 tables, as diffusers keeps them: betas = linspace(√β0, √β1, T)², ᾱ = cumprod(1 − β).
struct NoiseSchedule {
  explicit NoiseSchedule(const NoiseScheduleConfig& config = {});
  NoiseScheduleConfig config;
  torch::Tensor betas;           // [T] float32
  torch::Tensor alphas_cumprod;  // [T] float32
  // σ_t = √((1 − ᾱ_t)/ᾱ_t), float32 as diffusers computes it, one per training step.
  std::vector<float> train_sigmas() const;
};

// Timesteps of a sampler's N steps, highest first, in float64 before any rounding: integer
// samplers (DDIM, DPM-Solver) round them, the Euler family casts them to float32. DPM-Solver spaces
// N + 1 points and drops the last (its flag).
std::vector<double> spaced_timesteps(const NoiseScheduleConfig& config, int64_t steps,
                                     TimestepSpacing spacing, bool dpm_solver_spacing);

// numpy.round (half to even), for the integer-timestep samplers.
double round_half_even(double x);

// σ at fractional timesteps by linear interpolation of the training sigmas (np.interp).
std::vector<double> interpolate_sigmas(const std::vector<float>& train_sigmas,
                                       const std::vector<double>& timesteps);

// Karras et al. (2022) ρ = 7 spacing between the largest and smallest of `sigmas`.
std::vector<double> karras_sigmas(const std::vector<double>& sigmas, int64_t steps);

// The fractional timestep whose log σ interpolates to log `sigma` (diffusers' _sigma_to_t).
double sigma_to_timestep(double sigma, const std::vector<float>& train_sigmas);

}  // namespace kiln
