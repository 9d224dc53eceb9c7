// Learning-rate schedules against diffusers' formulas (specs §3), written out independently here,
// at every step of a run with warm-up; plus the values a user would check by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "train/lr_schedule.h"
#include "util/error.h"

namespace kiln {
namespace {

constexpr double kPi = std::numbers::pi;

// λ(s) as diffusers.optimization writes each LambdaLR, times the base rate.
double diffusers_lr(const LrSchedule& s, int64_t step) {
  const double W = static_cast<double>(s.warmup_steps), T = static_cast<double>(s.total_steps);
  const double x = static_cast<double>(step);
  if (step < s.warmup_steps) return s.lr * x / std::max(1.0, W);
  const double progress = (x - W) / std::max(1.0, T - W);
  if (s.kind == "constant") return s.lr;
  if (s.kind == "linear") return s.lr * std::max(0.0, (T - x) / std::max(1.0, T - W));
  if (s.kind == "cosine") return s.lr * std::max(0.0, 0.5 * (1.0 + std::cos(kPi * 0.5 * 2.0 * progress)));
  if (s.kind == "cosine_with_restarts") {
    if (progress >= 1.0) return 0.0;
    return s.lr * std::max(0.0, 0.5 * (1.0 + std::cos(kPi * std::fmod(s.cycles * progress, 1.0))));
  }
  // polynomial: ((lr_init − lr_end)·(1 − (s − W)/(T − W))^power + lr_end) / lr_init, times lr_init
  if (x > T) return s.end_lr;
  return (s.lr - s.end_lr) * std::pow(1.0 - (x - W) / (T - W), s.power) + s.end_lr;
}

TEST(LrSchedule, EveryScheduleFollowsDiffusersAtEveryStep) {
  for (const auto& kind : lr_schedule_names()) {
    for (const int64_t warmup : {0, 1, 7}) {
      LrSchedule s{kind, 2e-4, warmup, 100, 3, 2.0, 1e-6};
      for (int64_t step = 0; step <= 110; ++step)
        EXPECT_NEAR(learning_rate_at(s, step), diffusers_lr(s, step), 1e-18)
            << kind << " warmup " << warmup << " step " << step;
    }
  }
}

TEST(LrSchedule, ValuesOneChecksByHand) {
  const LrSchedule warm{"constant", 1.0, 4, 20};
  EXPECT_EQ(learning_rate_at(warm, 0), 0.0);  // the first update of a warm-up runs at 0, as diffusers
  EXPECT_EQ(learning_rate_at(warm, 2), 0.5);
  EXPECT_EQ(learning_rate_at(warm, 4), 1.0);
  const LrSchedule cosine{"cosine", 1.0, 0, 100};
  EXPECT_NEAR(learning_rate_at(cosine, 50), 0.5, 1e-15);
  EXPECT_NEAR(learning_rate_at(cosine, 100), 0.0, 1e-15);
  const LrSchedule linear{"linear", 1.0, 10, 110};
  EXPECT_NEAR(learning_rate_at(linear, 60), 0.5, 1e-15);
  EXPECT_EQ(learning_rate_at(linear, 200), 0.0);
  const LrSchedule restarts{"cosine_with_restarts", 1.0, 0, 100, 2};
  EXPECT_NEAR(learning_rate_at(restarts, 49), 0.5 * (1 + std::cos(kPi * 0.98)), 1e-15);
  EXPECT_EQ(learning_rate_at(restarts, 50), 1.0);  // the second cycle starts again at the top
  const LrSchedule polynomial{"polynomial", 1.0, 0, 10, 1, 2.0, 0.0 + 1e-7};
  EXPECT_NEAR(learning_rate_at(polynomial, 5), (1.0 - 1e-7) * 0.25 + 1e-7, 1e-15);
  EXPECT_EQ(learning_rate_at(polynomial, 11), 1e-7);
  EXPECT_THROW(learning_rate_at({"step", 1.0, 0, 10}, 1), Error);
  EXPECT_THROW(learning_rate_at({"polynomial", 1e-8, 0, 10, 1, 1.0, 1e-7}, 1), Error);
}

}  // namespace
}  // namespace kiln
