// Learning rate at an optimizer step, as diffusers' get_scheduler computes it (specs §3): a linear
// warm-up from 0 over `warmup_steps`, then constant, linear decay, half-cosine, cosine with hard
// restarts, or polynomial decay to `end_lr` over the remaining steps.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

struct LrSchedule {
  std::string kind = "constant";  // constant | linear | cosine | cosine_with_restarts | polynomial
  double lr = 1e-6;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  int64_t cycles = 1;    // cosine_with_restarts
  double power = 1.0;    // polynomial
  double end_lr = 1e-7;  // polynomial
};

// Schedule names, for help texts and errors.
std::vector<std::string> lr_schedule_names();

// `step` counts optimizer steps from 0 (the rate of the first update: 0 when there is a warm-up).
double learning_rate_at(const LrSchedule& schedule, int64_t step);

}  // namespace kiln
