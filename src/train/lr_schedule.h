// Learning rate at an optimizer step: linear warm-up from 0, then constant, linear decay to 0 or
// half-cosine to 0 over the remaining steps (diffusers' get_scheduler formulas, specs §3).
#pragma once
#include <cstdint>
#include <string>

namespace kiln {

struct LrSchedule {
  std::string kind = "constant";  // constant | linear | cosine
  double lr = 1e-6;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
};

// `step` counts optimizer steps from 0 (the rate used for the first update).
double learning_rate_at(const LrSchedule& schedule, int64_t step);

}  // namespace kiln
