// Runs survive crashes: `kiln train` on the tiny model is killed with SIGKILL at random moments
// (some of them during checkpoint writes) and resumed, over and over; no checkpoint is ever
// unreadable and the finished run's weights and optimizer state are bit-identical to a run that was
// never interrupted. SIGTERM saves and stops cleanly. A save that fails (a file-size limit standing
// in for a full disk) reports the file, leaves the previous checkpoint intact and nothing half-written.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include "data/synthetic.h"
#include "golden_compare.h"
#include "io/safetensors.h"
#include "test_support.h"

extern char** environ;

namespace kiln {
namespace {

namespace fs = std::filesystem;

// A data set and a run file in `dir`: 8 pictures, 4 steps per epoch, 24 epochs, a checkpoint each.
void write_run(const fs::path& dir) {
  write_synthetic_dataset(dir / "data", 8, 64, 11);
  std::ofstream(dir / "run.toml") << test::tiny_run_file_head(dir / "data") << R"(random_flip = true
shuffle_tags = true
caption_dropout = 0.1
batch_size = 2
[text_encoder]
lr = 1e-4
[unet]
lr = 2e-4
optimizer = "adamw8bit"
block_size = 64
[training]
epochs = 24
ema_decay = 0.9
[validation]
stabilize_items = 2
timesteps_per_item = 1
[checkpoints]
every_epochs = 1
dtype = "fp32"
keep_last_states = 2
[logging]
tensorboard = false
)";
}

class CrashSafetyTest : public test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    write_run(dir_);
  }
  static void TearDownTestSuite() {
    if (!reference_dir().empty()) fs::remove_all(reference_dir());
  }
  static fs::path& reference_dir() {
    static fs::path dir;
    return dir;
  }

  // `kiln ARGS` as a child process (no shell), output to `log`.
  static pid_t start_kiln(const std::vector<std::string>& args, const fs::path& log) {
    std::vector<std::string> argv{KILN_CLI_PATH, "--threads", "1"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> raw;
    for (auto& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, raw[0], &actions, nullptr, raw.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    EXPECT_EQ(rc, 0);
    return pid;
  }

  static int wait_for(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  static std::vector<std::string> train_args(const fs::path& run, const fs::path& run_file) {
    // A fresh start until the run has written its run.toml, then resumes.
    if (fs::exists(run / "run.toml")) return {"train", "--resume", run.string()};
    return {"train", run_file.string(), "--out", run.string()};
  }
  std::vector<std::string> train_args(const fs::path& run) const {
    return train_args(run, dir_ / "run.toml");
  }

  // The uninterrupted run, made once for the suite (its own folder, the same data and settings).
  static fs::path reference() {
    if (reference_dir().empty()) {
      reference_dir() = test::fresh_temp_dir("kiln-crash-reference");
      write_run(reference_dir());
      const auto run = reference_dir() / "run";
      const int code =
          wait_for(start_kiln(train_args(run, reference_dir() / "run.toml"), reference_dir() / "log"));
      EXPECT_EQ(code, 0) << test::read_bytes(reference_dir() / "log");
    }
    return reference_dir() / "run";
  }

  // Every file under a final name in checkpoints/ opens and reads completely.
  static void expect_checkpoints_readable(const fs::path& run, int kill) {
    if (!fs::exists(run / "checkpoints")) return;
    for (const auto& entry : fs::directory_iterator(run / "checkpoints")) {
      const auto name = entry.path().filename().string();
      if (name.find(".tmp-") != std::string::npos) continue;  // a temporary of the killed writer
      try {
        const auto file = SafeTensorsFile::open(entry.path());
        for (const auto& t : file.entries()) file.tensor(t.name).sum().item<double>();
      } catch (const std::exception& e) {
        ADD_FAILURE() << "after kill " << kill << ": " << entry.path() << " is unreadable: " << e.what();
      }
    }
  }

  static void expect_same_final_state(const fs::path& a, const fs::path& b) {
    const auto x = SafeTensorsFile::open(a / "checkpoints" / "e0024.state.safetensors");
    const auto y = SafeTensorsFile::open(b / "checkpoints" / "e0024.state.safetensors");
    ASSERT_EQ(x.entries().size(), y.entries().size());
    for (const auto& entry : x.entries())
      EXPECT_TRUE(torch::equal(x.tensor(entry.name), y.tensor(entry.name))) << entry.name;
    const auto cx = SafeTensorsFile::open(a / "checkpoints" / "e0024.safetensors");
    const auto cy = SafeTensorsFile::open(b / "checkpoints" / "e0024.safetensors");
    for (const auto& entry : cx.entries())
      EXPECT_TRUE(torch::equal(cx.tensor(entry.name), cy.tensor(entry.name))) << entry.name;
  }
};

TEST_F(CrashSafetyTest, TwentyKillsThenBitIdenticalToAnUninterruptedRun) {
  std::mt19937 rng(20261206);
  // Start-up (loading libtorch and the model) takes about a second; kills land from before the
  // first step to well into training, checkpoint writes included. A run that gets to its end between
  // kills is checked like the last one, and the kills go on with a new run.
  std::uniform_int_distribution<int> delay_ms(700, 2600);
  int kills = 0, during_write = 0, finished_runs = 0;
  auto run = dir_ / "killed-0";
  for (int attempt = 0; attempt < 300; ++attempt) {
    const pid_t pid = start_kiln(train_args(run), dir_ / "killed.log");
    if (kills >= 20) {
      ASSERT_EQ(wait_for(pid), 0) << test::read_bytes(dir_ / "killed.log");
      ++finished_runs;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::read_bytes(dir_ / "killed.log");
      expect_same_final_state(reference(), run);
      ++finished_runs;
      run = dir_ / fmt::format("killed-{}", finished_runs);
      continue;
    }
    ::kill(pid, SIGKILL);
    ASSERT_EQ(wait_for(pid), 128 + SIGKILL);
    ++kills;
    if (fs::exists(run / "checkpoints"))
      for (const auto& entry : fs::directory_iterator(run / "checkpoints"))
        if (entry.path().filename().string().find(".tmp-") != std::string::npos) {
          ++during_write;
          break;
        }
    expect_checkpoints_readable(run, kills);
  }
  std::cout << kills << " SIGKILLs (" << during_write << " during a checkpoint write), " << finished_runs
            << " killed run(s) brought to the end\n";
  ASSERT_GE(kills, 20) << test::read_bytes(dir_ / "killed.log");
  expect_same_final_state(reference(), run);
  // The killed writers' temporaries were cleared by the resumes.
  for (const auto& entry : fs::directory_iterator(run / "checkpoints"))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
}

// The run file is written before any work, so a run killed in its first moments (loading the model,
// caching latents), before any checkpoint, resumes: with no state yet it starts over and says so.
TEST_F(CrashSafetyTest, ARunKilledBeforeItsFirstCheckpointResumes) {
  const auto run = dir_ / "early";
  const pid_t pid = start_kiln(train_args(run), dir_ / "early.log");
  for (int i = 0; i < 3000 && !fs::exists(run / "run.toml"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ::kill(pid, SIGKILL);
  ASSERT_EQ(wait_for(pid), 128 + SIGKILL);
  ASSERT_TRUE(fs::exists(run / "run.toml")) << test::read_bytes(dir_ / "early.log");
  ASSERT_FALSE(fs::exists(run / "checkpoints" / "e0001.safetensors"));
  ASSERT_EQ(train_args(run)[1], "--resume");
  EXPECT_EQ(wait_for(start_kiln(train_args(run), dir_ / "resumed.log")), 0) << test::read_bytes(dir_ / "resumed.log");
  EXPECT_NE(test::read_bytes(dir_ / "resumed.log").find("starting from the beginning"), std::string::npos);
  expect_same_final_state(reference(), run);
}

TEST_F(CrashSafetyTest, SigtermSavesACheckpointAndTheResumedRunFinishesExactly) {
  const auto run = dir_ / "stopped";
  const pid_t pid = start_kiln(train_args(run), dir_ / "stopped.log");
  // Wait for training to be under way (the first checkpoint), then ask it to stop.
  for (int i = 0; i < 600 && !fs::exists(run / "checkpoints" / "e0001.safetensors"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(pid, SIGTERM);
  const int code = wait_for(pid);
  const auto log = test::read_bytes(dir_ / "stopped.log");
  EXPECT_EQ(code, 1) << log;  // stopped early: not a success, but an orderly exit
  EXPECT_NE(log.find("training interrupted; continue with: kiln train --resume"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "e0024.safetensors"));
  ASSERT_EQ(wait_for(start_kiln(train_args(run), dir_ / "stopped.log")), 0)
      << test::read_bytes(dir_ / "stopped.log");
  expect_same_final_state(reference(), run);
}

TEST_F(CrashSafetyTest, AFailedSaveKeepsThePreviousCheckpointAndLeavesNothingHalfWritten) {
  const auto run = dir_ / "full";
  ASSERT_EQ(wait_for(start_kiln(
                {"train", (dir_ / "run.toml").string(), "--out", run.string(), "--set", "training.epochs=1"},
                dir_ / "first.log")),
            0);
  const auto checkpoint = run / "checkpoints" / "e0001.safetensors";
  const auto state = run / "checkpoints" / "e0001.state.safetensors";
  const auto before = test::read_bytes(checkpoint), state_before = test::read_bytes(state);
  // A file-size limit below a checkpoint's size: the next save's write fails with EFBIG, as on a
  // full disk.
  const auto limit = fs::file_size(checkpoint) / 2;
  const std::string command = fmt::format(
      "prlimit --fsize={} {} --threads 1 train --resume {} --set training.epochs=2 --set checkpoints.save_retries=2 "
      "--set checkpoints.save_retry_seconds=0.1 2>&1",
      limit, KILN_CLI_PATH, run.string());
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  EXPECT_NE(WEXITSTATUS(status), 0) << output;
  EXPECT_NE(output.find("e0002"), std::string::npos) << output;
  EXPECT_NE(output.find("File too large"), std::string::npos) << output;
  EXPECT_NE(output.find("trying again in 0.1 s (2 of 2)"), std::string::npos) << output;
  EXPECT_NE(output.find("saving failed after 3 attempt(s); the previous checkpoint is intact"), std::string::npos)
      << output;
  EXPECT_EQ(test::read_bytes(checkpoint), before);
  EXPECT_EQ(test::read_bytes(state), state_before);
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "e0002.safetensors"));
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "e0002.state.safetensors"));
  for (const auto& entry : fs::directory_iterator(run / "checkpoints"))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  // With room again, the same resume finishes.
  ASSERT_EQ(wait_for(start_kiln({"train", "--resume", run.string(), "--set", "training.epochs=2"},
                                dir_ / "again.log")),
            0)
      << test::read_bytes(dir_ / "again.log");
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "e0002.safetensors"));
}

}  // namespace
}  // namespace kiln
