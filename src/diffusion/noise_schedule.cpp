#include "diffusion/noise_schedule.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace kiln {

TimestepSpacing parse_spacing(const std::string& name) {
  if (name == "leading") return TimestepSpacing::Leading;
  if (name == "trailing") return TimestepSpacing::Trailing;
  if (name == "linspace") return TimestepSpacing::Linspace;
  throw Error("unknown timestep spacing '" + name + "' (leading, trailing or linspace)");
}

NoiseSchedule::NoiseSchedule(const NoiseScheduleConfig& c) : config(c) {
  betas =
      torch::linspace(std::sqrt(c.beta_start), std::sqrt(c.beta_end), c.num_train_timesteps, torch::kFloat32)
          .pow(2);
  alphas_cumprod = torch::cumprod(1.0 - betas, 0);
}

std::vector<float> NoiseSchedule::train_sigmas() const {
  auto sigmas = ((1 - alphas_cumprod) / alphas_cumprod).pow(0.5).contiguous();
  return {sigmas.data_ptr<float>(), sigmas.data_ptr<float>() + sigmas.numel()};
}

namespace {

// numpy.linspace in float64.
std::vector<double> linspace(double start, double stop, int64_t n) {
  std::vector<double> out(n);
  if (n == 1) return {start};
  const double step = (stop - start) / static_cast<double>(n - 1);
  for (int64_t i = 0; i < n; ++i) out[i] = start + static_cast<double>(i) * step;
  out[n - 1] = stop;
  return out;
}

// numpy.round: half to even.
}  // namespace

double round_half_even(double x) { return std::nearbyint(x); }

std::vector<double> spaced_timesteps(const NoiseScheduleConfig& c, int64_t steps, TimestepSpacing spacing,
                                     bool dpm_solver_spacing) {
  const int64_t T = c.num_train_timesteps;
  TORCH_CHECK(steps >= 1 && steps <= T, "steps must be in 1..", T);
  std::vector<double> t;
  // DPM-Solver spaces N + 1 points and drops the last (diffusers DPMSolverMultistepScheduler).
  const int64_t points = dpm_solver_spacing ? steps + 1 : steps;
  switch (spacing) {
    case TimestepSpacing::Linspace: {
      t = linspace(0, static_cast<double>(T - 1), points);
      std::reverse(t.begin(), t.end());
      t.resize(steps);
      break;
    }
    case TimestepSpacing::Leading: {
      const int64_t ratio = T / points;
      for (int64_t i = points - 1; i >= 0; --i) t.push_back(static_cast<double>(i * ratio + c.steps_offset));
      t.resize(steps);
      break;
    }
    case TimestepSpacing::Trailing: {
      const double ratio = static_cast<double>(T) / static_cast<double>(steps);
      // numpy arange(T, 0, -ratio): start + i * step, not an accumulated sum.
      for (int64_t i = 0; static_cast<double>(T) - static_cast<double>(i) * ratio > 0; ++i)
        t.push_back(round_half_even(static_cast<double>(T) - static_cast<double>(i) * ratio) - 1);
      t.resize(steps);
      break;
    }
  }
  return t;
}

std::vector<double> interpolate_sigmas(const std::vector<float>& train,
                                       const std::vector<double>& timesteps) {
  std::vector<double> out;
  const int64_t last = static_cast<int64_t>(train.size()) - 1;
  for (double t : timesteps) {
    if (t <= 0) {
      out.push_back(train.front());
      continue;
    }
    if (t >= static_cast<double>(last)) {
      out.push_back(train.back());
      continue;
    }
    const auto low = static_cast<int64_t>(std::floor(t));
    const double w = t - static_cast<double>(low);
    const double a = train[low], b = train[low + 1];
    out.push_back(w == 0 ? a : a + (b - a) * w);
  }
  return out;
}

std::vector<double> karras_sigmas(const std::vector<double>& sigmas, int64_t steps) {
  const double sigma_min = *std::min_element(sigmas.begin(), sigmas.end());
  const double sigma_max = *std::max_element(sigmas.begin(), sigmas.end());
  constexpr double kRho = 7.0;
  const double min_inv = std::pow(sigma_min, 1.0 / kRho), max_inv = std::pow(sigma_max, 1.0 / kRho);
  std::vector<double> out;
  for (double ramp : linspace(0, 1, steps))
    out.push_back(std::pow(max_inv + ramp * (min_inv - max_inv), kRho));
  return out;
}

double sigma_to_timestep(double sigma, const std::vector<float>& train) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const auto n = static_cast<int64_t>(train.size());
  // Index of the last training log σ not above log_sigma, clipped so that idx + 1 exists.
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i)
    if (log_sigma - static_cast<double>(std::log(train[i])) >= 0) ++count;
  int64_t low = std::clamp<int64_t>(count - 1, 0, n - 2);
  if (count == 0) low = 0;
  // numpy keeps log σ in float32, so low - high is a float32 difference; the rest is float64.
  const float lo = std::log(train[low]), hi = std::log(train[low + 1]);
  const float span = lo - hi;
  const double w = std::clamp((static_cast<double>(lo) - log_sigma) / static_cast<double>(span), 0.0, 1.0);
  return (1 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
}

}  // namespace kiln
