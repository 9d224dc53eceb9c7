#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "util/error.h"

namespace kiln {

double learning_rate_at(const LrSchedule& s, int64_t step) {
  const double warmup = static_cast<double>(s.warmup_steps);
  if (step < s.warmup_steps) return s.lr * static_cast<double>(step) / std::max(1.0, warmup);
  if (s.kind == "constant") return s.lr;
  const double remaining = std::max<double>(1.0, static_cast<double>(s.total_steps - s.warmup_steps));
  const double progress = (static_cast<double>(step) - warmup) / remaining;
  if (s.kind == "linear") return s.lr * std::max(0.0, 1.0 - progress);
  if (s.kind == "cosine") return s.lr * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
  throw Error("unknown learning-rate schedule '" + s.kind + "' (constant, linear, cosine)");
}

}  // namespace kiln
