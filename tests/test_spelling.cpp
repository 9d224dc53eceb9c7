// Edit distances and "did you mean" suggestions.
#include <gtest/gtest.h>

#include "util/spelling.h"

namespace {

TEST(Spelling, EditDistanceCountsEdits) {
  EXPECT_EQ(kiln::edit_distance("", ""), 0u);
  EXPECT_EQ(kiln::edit_distance("lr", "lr"), 0u);
  EXPECT_EQ(kiln::edit_distance("", "abc"), 3u);
  EXPECT_EQ(kiln::edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(kiln::edit_distance("epochs", "epcohs"), 1u);  // an adjacent swap is one edit
  EXPECT_EQ(kiln::edit_distance("warmup_step", "warmup_steps"), 1u);
  EXPECT_EQ(kiln::edit_distance("abc", "xyz"), 3u);
}

TEST(Spelling, ClosestMatchOnlyForTypos) {
  const std::vector<std::string> keys{"lr", "optimizer", "warmup_steps", "schedule", "epochs"};
  EXPECT_EQ(kiln::closest_match("optimiser", keys), "optimizer");
  EXPECT_EQ(kiln::closest_match("warmupsteps", keys), "warmup_steps");
  EXPECT_EQ(kiln::closest_match("epoch", keys), "epochs");
  EXPECT_EQ(kiln::closest_match("lt", keys), "lr");
  EXPECT_FALSE(kiln::closest_match("banana", keys).has_value());
  EXPECT_FALSE(kiln::closest_match("learning_rate", keys).has_value());
  EXPECT_FALSE(kiln::closest_match("x", {}).has_value());
}

}  // namespace
