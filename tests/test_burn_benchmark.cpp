// The labelled burn benchmark at CI size (bench/bench_diagnosis.cpp runs the full one): on the
// shipped demo base, a text-encoder-only, a UNet-only, a both-parts and a gentle fine-tune of the
// demo's style look, two checkpoints each. The diagnosis must name the part that trained, flag no
// later than the first checkpoint the world's own truth calls damaged, and raise no alarm on the
// gentle run before the truth sees damage there.
#include <gtest/gtest.h>

#include <filesystem>

#include "demo/burn_benchmark.h"
#include "demo/world_drawing.h"
#include "test_support.h"

namespace kiln {
namespace {

class BurnBenchmark : public test::TempDirTest {};

TEST_F(BurnBenchmark, NamesThePartInTimeAndRaisesNoFalseAlarm) {
  BurnBenchmarkOptions options;
  options.base = std::filesystem::path(KILN_SOURCE_DIR) / "assets" / "demo-base";
  options.out_dir = dir_;
  options.epochs = 12;
  options.every = 6;
  options.diagnosis_seeds = {1, 2};
  options.truth_seeds = {201};
  // Every fourth world prompt (12 of 45): every colour, shape and background, in varied pairings.
  const auto every = world_prompts();
  for (size_t i = 0; i < every.size(); i += 4) options.truth_prompts.push_back(every[i]);
  const std::vector<BurnBenchmarkRun> runs = {
      {"stripes-te", 0, 11, BurnRunKind::TextEncoder, 1e-3, 0},
      {"stripes-unet", 0, 11, BurnRunKind::Unet, 0, 1e-3},
      {"stripes-both", 0, 11, BurnRunKind::Both, 5e-4, 5e-4},
      {"stripes-gentle", 0, 11, BurnRunKind::Gentle, 5e-6, 2e-5},
  };
  std::vector<BurnRunOutcome> outcomes;
  for (const auto& run : runs) outcomes.push_back(run_burn_benchmark(run, options));
  const std::string table = burn_benchmark_table(outcomes);
  for (const auto& o : outcomes) {
    SCOPED_TRACE(o.run.name + "\n" + table + "\n" + o.to_json().dump(1));
    ASSERT_EQ(o.checkpoints.size(), 2u);
    EXPECT_TRUE(o.right_part);
    EXPECT_FALSE(o.false_alarm);
  }
  // The over-trained runs really are damaged by the truth's measure (else the test shows nothing),
  // and every run, the gentle one included, is flagged no later than the truth sees damage.
  for (size_t i = 0; i < outcomes.size(); ++i) {
    if (i < 3) EXPECT_TRUE(outcomes[i].first_damaged.has_value()) << outcomes[i].run.name << "\n" << table;
    EXPECT_TRUE(outcomes[i].in_time) << outcomes[i].run.name << "\n" << table;
  }
}

}  // namespace
}  // namespace kiln
