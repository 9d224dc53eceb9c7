// A long run does not leak: 1,000 optimizer steps of the tiny model in this process, resident memory
// sampled every 50 steps; after warm-up it must stay flat.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <malloc.h>

#include <fstream>
#include <string>

#include "data/synthetic.h"
#include "golden_compare.h"
#include "test_support.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace kiln {
namespace {

// Resident set size of this process in KiB (/proc/self/status VmRSS).
int64_t resident_kib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

// Bytes handed out by malloc and not yet freed, in KiB: the arenas' blocks in use plus the blocks
// malloc mapped on their own (glibc's mallinfo2).
int64_t allocated_kib() {
  const auto info = mallinfo2();
  return static_cast<int64_t>((info.uordblks + info.hblkhd) / 1024);
}

class LongRunTest : public test::TempDirTest {};

TEST_F(LongRunTest, ResidentMemoryStaysFlatOverAThousandSteps) {
  write_synthetic_dataset(dir_ / "data", 10, 64, 3);
  const auto config = parse_run_config(test::tiny_run_file_head(dir_ / "data") + R"(random_flip = true
shuffle_tags = true
caption_dropout = 0.1
batch_size = 1
[text_encoder]
lr = 1e-5
[unet]
lr = 1e-5
optimizer = "adamw8bit"
[training]
epochs = 100
ema_decay = 0.99
[validation]
every_epochs = 25
stabilize_items = 2
timesteps_per_item = 1
[checkpoints]
every_epochs = 20
dtype = "fp16"
keep_last_states = 1
[logging]
tensorboard = true
)",
                                       "long.toml");
  struct Sample {
    int64_t step, resident_kib, allocated_kib;
  };
  std::vector<Sample> samples;
  TrainOptions options;
  options.run_dir = dir_ / "run";
  options.after_step = [&](int64_t step, const std::vector<torch::Tensor>&) {
    if (step % 50 == 0) samples.push_back({step, resident_kib(), allocated_kib()});
  };
  const auto result = train(config, options);
  ASSERT_EQ(result.global_step, 1000);
  ASSERT_EQ(samples.size(), 20u);
  // Warm-up: allocator pools, optimizer state, latent cache, the first checkpoint (step 200) and the
  // first validation (step 250). Growth is measured over the last 700 steps (4 checkpoints, 2 validations).
  const auto growth = [&](int64_t Sample::*field) {
    int64_t at_warmup = 0, highest = 0;
    for (const auto& sample : samples) {
      if (sample.step == 300) at_warmup = sample.*field;
      if (sample.step >= 300) highest = std::max(highest, sample.*field);
    }
    return highest - at_warmup;
  };
  std::string trace;
  for (const auto& s : samples)
    trace += fmt::format(" {}:{}/{}MiB", s.step, s.resident_kib / 1024, s.allocated_kib / 1024);
  std::cout << "resident / allocated memory by step:" << trace << "\n";
  // What the program holds: every block malloc has handed out (libtorch's tensors included) and not
  // taken back. Measured: constant to the MiB (123 MiB) from step 50 to 1000, in every run. 4 MiB over 700 steps
  // catches a leak of 6 KiB per step.
  EXPECT_LT(growth(&Sample::allocated_kib), 4 * 1024) << trace;
  // What the system sees moves by itself: after some checkpoint saves it rises 6-17 MiB and may fall
  // back at a later one (296 -> 313 -> 296 MiB alone; +17 and +19 MiB to the end in two CI runs beside
  // another test) while the allocated memory does not move: pages the C library keeps or libraries map,
  // not memory kiln holds. 32 MiB catches a leak outside malloc of ~46 KiB per step.
  EXPECT_LT(growth(&Sample::resident_kib), 32 * 1024) << trace;
}

}  // namespace
}  // namespace kiln
