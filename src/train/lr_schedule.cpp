#include "train/lr_schedule.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "util/error.h"

namespace kiln {

std::vector<std::string> lr_schedule_names() {
  return {"constant", "linear", "cosine", "cosine_with_restarts", "polynomial"};
}

double learning_rate_at(const LrSchedule& s, int64_t step) {
  const auto steps = static_cast<double>(step), warmup = static_cast<double>(s.warmup_steps);
  const auto total = static_cast<double>(s.total_steps);
  if (step < s.warmup_steps) return s.lr * steps / std::max(1.0, warmup);
  const double progress = (steps - warmup) / std::max(1.0, total - warmup);
  if (s.kind == "constant") return s.lr;
  if (s.kind == "linear") return s.lr * std::max(0.0, (total - steps) / std::max(1.0, total - warmup));
  if (s.kind == "cosine")
    return s.lr * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 2.0 * 0.5 * progress)));
  if (s.kind == "cosine_with_restarts") {
    if (progress >= 1.0) return 0.0;
    const double cycle = std::fmod(static_cast<double>(s.cycles) * progress, 1.0);
    return s.lr * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * cycle)));
  }
  if (s.kind == "polynomial") {
    if (!(s.lr > s.end_lr))
      throw Error(fmt::format("polynomial schedule: lr {} must exceed end_lr {}", s.lr, s.end_lr));
    if (steps > total) return s.end_lr;
    return (s.lr - s.end_lr) * std::pow(1.0 - (steps - warmup) / (total - warmup), s.power) + s.end_lr;
  }
  throw Error(
      fmt::format("unknown learning-rate schedule '{}' ({})", s.kind, fmt::join(lr_schedule_names(), ", ")));
}

}  // namespace kiln
