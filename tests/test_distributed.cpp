// Data-parallel primitives: torchrun's environment variables, the one-process group, two real ranks
// over Gloo on loopback (this binary launched twice as workers), and the process launcher.
#include <gtest/gtest.h>
#include <signal.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"
#include "train/distributed.h"
#include "train/process_launcher.h"

namespace {

using kiln::test::error_of;

// Passes when `part` occurs in `text`; on failure shows both.
::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

// Sets (value) or unsets (nullopt) environment variables for one test and restores them after.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::optional<std::string>>& values) {
    for (const auto& [name, value] : values) {
      const char* old = std::getenv(name.c_str());
      saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
      if (value) {
        setenv(name.c_str(), value->c_str(), 1);
      } else {
        unsetenv(name.c_str());
      }
    }
  }
  ~ScopedEnv() {
    for (const auto& [name, value] : saved_) {
      if (value) {
        setenv(name.c_str(), value->c_str(), 1);
      } else {
        unsetenv(name.c_str());
      }
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

// All of torchrun's variables unset, then `values` applied.
std::map<std::string, std::optional<std::string>> torchrun_env(
    const std::map<std::string, std::optional<std::string>>& values = {}) {
  std::map<std::string, std::optional<std::string>> all = {
      {"RANK", std::nullopt},        {"WORLD_SIZE", std::nullopt},  {"LOCAL_RANK", std::nullopt},
      {"MASTER_ADDR", std::nullopt}, {"MASTER_PORT", std::nullopt}, {"GLOO_SOCKET_IFNAME", std::nullopt}};
  for (const auto& [name, value] : values) all[name] = value;
  return all;
}

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// ---------------------------------------------------------------------------------------------
// Environment

TEST(DistributedEnvironment, AbsentMeansOneProcess) {
  ScopedEnv env(torchrun_env());
  const kiln::DistributedEnvironment e = kiln::read_distributed_environment();
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.local_rank, 0);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
  EXPECT_EQ(e.gloo_socket_ifname, "");
}

TEST(DistributedEnvironment, ReadsTorchrunVariables) {
  ScopedEnv env(torchrun_env({{"RANK", "5"},
                              {"WORLD_SIZE", "8"},
                              {"LOCAL_RANK", "1"},
                              {"MASTER_ADDR", "10.1.2.3"},
                              {"MASTER_PORT", "1234"},
                              {"GLOO_SOCKET_IFNAME", "eth1"}}));
  const kiln::DistributedEnvironment e = kiln::read_distributed_environment();
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "10.1.2.3");
  EXPECT_EQ(e.master_port, 1234);
  EXPECT_EQ(e.gloo_socket_ifname, "eth1");
}

TEST(DistributedEnvironment, LocalRankDefaultsToRank) {
  ScopedEnv env(torchrun_env({{"RANK", "1"}, {"WORLD_SIZE", "2"}}));
  EXPECT_EQ(kiln::read_distributed_environment().local_rank, 1);
}

TEST(DistributedEnvironment, MalformedValuesNameTheVariable) {
  struct Case {
    std::map<std::string, std::optional<std::string>> values;
    std::string expected;  // a substring of the message: the variable and its value
  };
  const std::vector<Case> cases = {
      {{{"RANK", "abc"}, {"WORLD_SIZE", "2"}}, "RANK=abc"},
      {{{"RANK", "1x"}, {"WORLD_SIZE", "2"}}, "RANK=1x"},
      {{{"RANK", ""}, {"WORLD_SIZE", "2"}}, "RANK= is not a whole number"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "two"}}, "WORLD_SIZE=two"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "0"}}, "WORLD_SIZE=0"},
      {{{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "RANK=2 is not below WORLD_SIZE=2"},
      {{{"RANK", "-1"}, {"WORLD_SIZE", "2"}}, "RANK=-1"},
      {{{"RANK", "1"}}, "RANK=1 is not below WORLD_SIZE=1"},
      {{{"WORLD_SIZE", "2"}}, "RANK=(unset) must be set when WORLD_SIZE=2"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "5"}}, "LOCAL_RANK=5"},
      {{{"MASTER_PORT", "70000"}}, "MASTER_PORT=70000"},
      {{{"MASTER_PORT", "0"}}, "MASTER_PORT=0"},
      {{{"MASTER_PORT", "http"}}, "MASTER_PORT=http"},
      {{{"MASTER_ADDR", ""}}, "MASTER_ADDR= is empty"},
  };
  for (const auto& c : cases) {
    ScopedEnv env(torchrun_env(c.values));
    const auto message = error_of([] { kiln::read_distributed_environment(); });
    ASSERT_TRUE(message.has_value()) << "no kiln::Error for the case expecting '" << c.expected << "'";
    EXPECT_TRUE(contains(*message, c.expected));
  }
}

// ---------------------------------------------------------------------------------------------
// One process: no store, no sockets, nothing changes

TEST(DataParallelGroup, SingleProcessOperationsAreNoOps) {
  auto group =
      kiln::DataParallelGroup::join(kiln::DistributedEnvironment{}, torch::kCPU, std::chrono::seconds(1));
  EXPECT_EQ(group->rank(), 0);
  EXPECT_EQ(group->world_size(), 1);
  EXPECT_TRUE(group->is_main());

  torch::Tensor with_grad = torch::ones({3}).requires_grad_();
  with_grad.mutable_grad() = torch::tensor({1.f, 2.f, 3.f});
  torch::Tensor without_grad = torch::ones({2}).requires_grad_();
  group->all_reduce_gradients({with_grad, without_grad});
  EXPECT_TRUE(torch::equal(with_grad.grad(), torch::tensor({1.f, 2.f, 3.f})));
  EXPECT_FALSE(without_grad.grad().defined());

  torch::Tensor t = torch::tensor({4.0, 5.0});
  group->all_reduce_sum(t);
  EXPECT_TRUE(torch::equal(t, torch::tensor({4.0, 5.0})));
  group->broadcast_from_main({t});
  EXPECT_TRUE(torch::equal(t, torch::tensor({4.0, 5.0})));
  EXPECT_TRUE(group->any(true));
  EXPECT_FALSE(group->any(false));
  group->barrier();
}

TEST(DataParallelGroup, CudaWithoutNcclIsRefusedByName) {
  if (kiln::has_collective_backend(torch::kCUDA)) GTEST_SKIP() << "this build has NCCL";
  kiln::DistributedEnvironment env;
  env.world_size = 2;
  const auto message = error_of(
      [&] { kiln::DataParallelGroup::join(env, torch::Device(torch::kCUDA, 0), std::chrono::seconds(1)); });
  ASSERT_TRUE(message.has_value());
  EXPECT_TRUE(contains(*message, "built without NCCL"));
}

TEST(DataParallelGroup, CpuWithoutGlooIsRefusedByName) {
  if (kiln::has_collective_backend(torch::kCPU)) GTEST_SKIP() << "this build has gloo";
  kiln::DistributedEnvironment env;
  env.world_size = 2;
  const auto message =
      error_of([&] { kiln::DataParallelGroup::join(env, torch::kCPU, std::chrono::seconds(1)); });
  ASSERT_TRUE(message.has_value());
  EXPECT_TRUE(contains(*message, "built without gloo"));
}

TEST(DataParallelGroup, RendezvousTimeoutNamesTheAddress) {
  if (!kiln::has_collective_backend(torch::kCPU)) GTEST_SKIP() << "built without gloo";
  kiln::DistributedEnvironment env;
  env.rank = 1;  // a client: it waits for a rank 0 that never comes
  env.world_size = 2;
  env.master_port = kiln::pick_free_port("127.0.0.1");
  const auto start = std::chrono::steady_clock::now();
  const auto message =
      error_of([&] { kiln::DataParallelGroup::join(env, torch::kCPU, std::chrono::seconds(1)); });
  ASSERT_TRUE(message.has_value());
  EXPECT_TRUE(contains(*message, "127.0.0.1:" + std::to_string(env.master_port)));
  EXPECT_LT(seconds_since(start), 10.0);
}

// ---------------------------------------------------------------------------------------------
// Two ranks over Gloo: the launcher starts this binary twice with only DistributedWorker.* selected.

constexpr const char* kWorkerMarker = "KILN_TEST_DISTRIBUTED_WORKER";  // value: folder for "rank<N>.ok"

// What rank r holds before the collectives; the expected result is the sum over ranks 0 and 1.
torch::Tensor small_grad(int r) { return torch::arange(3, torch::kFloat32) * (r + 1) + 100 * r; }
torch::Tensor bias_grad(int r) { return torch::tensor({1.f, -2.f, 3.f, -4.f}) * (r + 2); }
torch::Tensor big_grad(int r) {
  return torch::arange(1000, torch::kFloat32) - 7 * r;
}  // 4000 bytes: own bucket
// 2^-40 is below float32's resolution near 1: the sum keeps it only if the fp64 path stays fp64.
torch::Tensor fp64_grad(int r) { return torch::full({5}, 1.0 + r * std::ldexp(1.0, -40), torch::kFloat64); }
// Stored transposed: a non-contiguous gradient must be unpacked back into its own layout.
torch::Tensor strided_grad(int r) { return (torch::arange(12, torch::kFloat32).reshape({3, 4}) + r).t(); }

TEST(DistributedWorker, CollectivesGiveExactSums) {
  const char* marker = std::getenv(kWorkerMarker);
  if (marker == nullptr) GTEST_SKIP() << "run by DataParallelGroup.TwoRanksOverGloo as a worker process";
  const kiln::DistributedEnvironment env = kiln::read_distributed_environment();
  ASSERT_EQ(env.world_size, 2);
  auto group = kiln::DataParallelGroup::join(env, torch::kCPU, std::chrono::seconds(30));
  const int r = group->rank();
  ASSERT_EQ(r, env.rank);
  ASSERT_EQ(group->world_size(), 2);
  EXPECT_EQ(group->is_main(), r == 0);

  // all_reduce_gradients with a 1 KiB bucket: small, bias and strided are packed into one float32
  // buffer, big (4000 bytes) goes alone, fp64 travels in its own dtype, and the parameter without a
  // gradient gets zeros.
  torch::Tensor small = torch::zeros({3}).requires_grad_();
  torch::Tensor bias = torch::zeros({4}).requires_grad_();
  torch::Tensor big = torch::zeros({1000}).requires_grad_();
  torch::Tensor fp64 = torch::zeros({5}, torch::kFloat64).requires_grad_();
  torch::Tensor no_grad = torch::zeros({2, 3}).requires_grad_();
  torch::Tensor strided = torch::zeros({4, 3}).requires_grad_();
  small.mutable_grad() = small_grad(r);
  bias.mutable_grad() = bias_grad(r);
  big.mutable_grad() = big_grad(r);
  fp64.mutable_grad() = fp64_grad(r);
  strided.mutable_grad() = strided_grad(r);
  ASSERT_FALSE(strided.grad().is_contiguous());
  group->all_reduce_gradients({small, bias, strided, big, fp64, no_grad}, 1024);
  EXPECT_TRUE(torch::equal(small.grad(), small_grad(0) + small_grad(1))) << small.grad();
  EXPECT_TRUE(torch::equal(bias.grad(), bias_grad(0) + bias_grad(1))) << bias.grad();
  EXPECT_TRUE(torch::equal(big.grad(), big_grad(0) + big_grad(1)));
  EXPECT_TRUE(torch::equal(fp64.grad(), fp64_grad(0) + fp64_grad(1))) << fp64.grad();
  EXPECT_EQ(fp64.grad().scalar_type(), torch::kFloat64);
  EXPECT_EQ(fp64.grad()[0].item<double>(), 2.0 + std::ldexp(1.0, -40));
  ASSERT_TRUE(no_grad.grad().defined());
  EXPECT_TRUE(torch::equal(no_grad.grad(), torch::zeros({2, 3})));
  EXPECT_TRUE(torch::equal(strided.grad(), strided_grad(0) + strided_grad(1))) << strided.grad();

  torch::Tensor summed = torch::full({4}, static_cast<float>(r + 1));
  group->all_reduce_sum(summed);
  EXPECT_TRUE(torch::equal(summed, torch::full({4}, 3.f))) << summed;
  torch::Tensor counts = torch::tensor({int64_t{10} * r + 1, int64_t{1} << 40});
  group->all_reduce_sum(counts);
  EXPECT_TRUE(torch::equal(counts, torch::tensor({int64_t{12}, int64_t{2} << 40}))) << counts;

  // broadcast_from_main: rank 1's values are replaced by rank 0's, including a leaf parameter.
  torch::Tensor weights = torch::arange(5, torch::kFloat32) + 10 * r;
  torch::Tensor state = torch::full({3}, 0.5 + r, torch::kFloat64);
  torch::Tensor parameter = torch::full({2, 2}, static_cast<float>(r)).requires_grad_();
  group->broadcast_from_main({weights, state, parameter}, 16);
  EXPECT_TRUE(torch::equal(weights, torch::arange(5, torch::kFloat32))) << weights;
  EXPECT_TRUE(torch::equal(state, torch::full({3}, 0.5, torch::kFloat64))) << state;
  EXPECT_TRUE(torch::equal(parameter.detach(), torch::zeros({2, 2}))) << parameter;

  EXPECT_TRUE(group->any(r == 1));
  EXPECT_FALSE(group->any(false));
  EXPECT_TRUE(group->any(true));
  group->barrier();

  if (!::testing::Test::HasFailure()) {
    std::ofstream(std::filesystem::path(marker) / ("rank" + std::to_string(r) + ".ok")) << "ok\n";
  }
}

class DistributedLaunch : public kiln::test::TempDirTest {};

TEST_F(DistributedLaunch, TwoRanksOverGloo) {
  if (!kiln::has_collective_backend(torch::kCPU)) GTEST_SKIP() << "built without gloo";
  ScopedEnv env(torchrun_env({{kWorkerMarker, dir_.string()}}));
  kiln::LaunchOptions options;
  options.nproc = 2;
  options.threads_per_process = 1;
  options.command = {self_exe(), "--gtest_filter=DistributedWorker.*", "--gtest_color=no"};
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(kiln::launch_local_processes(options), 0);
  // A worker that skipped would also exit 0: the files prove both ran every check.
  EXPECT_TRUE(std::filesystem::exists(dir_ / "rank0.ok"));
  EXPECT_TRUE(std::filesystem::exists(dir_ / "rank1.ok"));
  EXPECT_LT(seconds_since(start), 30.0);
}

// ---------------------------------------------------------------------------------------------
// Launcher

TEST_F(DistributedLaunch, ChildrenGetTorchrunVariables) {
  ScopedEnv env(torchrun_env({{"KILN_THREADS", std::nullopt}}));
  kiln::LaunchOptions options;
  options.nproc = 3;
  options.threads_per_process = 2;
  options.command = {"/bin/sh", "-c",
                     "echo \"$RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $KILN_THREADS\" > "
                     "\"$0/rank$RANK\"; echo \"$MASTER_PORT\" > \"$0/port$RANK\"",
                     dir_.string()};
  ASSERT_EQ(kiln::launch_local_processes(options), 0);
  const std::string port = read_text(dir_ / "port0");
  EXPECT_GT(std::stoi(port), 0);
  EXPECT_LE(std::stoi(port), 65535);
  for (int r = 0; r < 3; ++r) {
    const std::string rank = std::to_string(r);
    EXPECT_EQ(read_text(dir_ / ("rank" + rank)), rank + " " + rank + " 3 3 127.0.0.1 2");
    EXPECT_EQ(read_text(dir_ / ("port" + rank)), port);  // one rendezvous point for all
  }
}

TEST_F(DistributedLaunch, UserThreadsAndFixedPortAreKept) {
  ScopedEnv env(torchrun_env({{"KILN_THREADS", "5"}}));
  kiln::LaunchOptions options;
  options.nproc = 2;
  options.master_port = 23456;
  options.command = {"/bin/sh", "-c", "echo \"$MASTER_PORT $KILN_THREADS\" > \"$0/rank$RANK\"",
                     dir_.string()};
  ASSERT_EQ(kiln::launch_local_processes(options), 0);
  EXPECT_EQ(read_text(dir_ / "rank0"), "23456 5");
  EXPECT_EQ(read_text(dir_ / "rank1"), "23456 5");
}

TEST_F(DistributedLaunch, DefaultThreadsSplitTheCores) {
  ScopedEnv env(torchrun_env({{"KILN_THREADS", std::nullopt}}));
  kiln::LaunchOptions options;
  options.nproc = 2;
  options.command = {"/bin/sh", "-c", "echo \"$KILN_THREADS\" > \"$0/rank$RANK\"", dir_.string()};
  ASSERT_EQ(kiln::launch_local_processes(options), 0);
  const int expected = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 2);
  EXPECT_EQ(read_text(dir_ / "rank0"), std::to_string(expected));
}

TEST_F(DistributedLaunch, OneFailureStopsTheOthersAndGivesItsCode) {
  kiln::LaunchOptions options;
  options.nproc = 2;
  options.command = {"/bin/sh", "-c", "if [ \"$RANK\" = 1 ]; then exit 3; fi; sleep 60"};
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(kiln::launch_local_processes(options), 3);
  EXPECT_LT(seconds_since(start), 5.0);
}

TEST_F(DistributedLaunch, DeathBySignalGives128PlusSignal) {
  kiln::LaunchOptions options;
  options.nproc = 2;
  options.command = {"/bin/sh", "-c", "if [ \"$RANK\" = 0 ]; then kill -KILL $$; fi; sleep 60"};
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(kiln::launch_local_processes(options), 128 + SIGKILL);
  EXPECT_LT(seconds_since(start), 5.0);
}

TEST_F(DistributedLaunch, ChildIgnoringSigtermIsKilledAfterTheGrace) {
  kiln::LaunchOptions options;
  options.nproc = 2;
  options.termination_grace = std::chrono::seconds(1);
  // Rank 0 (and its sleep, which inherits the ignored disposition) shrugs off SIGTERM.
  options.command = {"/bin/sh", "-c",
                     "trap '' TERM; if [ \"$RANK\" = 1 ]; then sleep 0.2; exit 4; fi; sleep 60"};
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(kiln::launch_local_processes(options), 4);
  const double elapsed = seconds_since(start);
  EXPECT_GE(elapsed, 1.0);
  EXPECT_LT(elapsed, 5.0);
}

TEST_F(DistributedLaunch, SigintIsForwardedAndTheHandlerRestored) {
  struct sigaction before {};
  sigaction(SIGINT, nullptr, &before);
  kiln::LaunchOptions options;
  options.nproc = 2;
  options.command = {"/bin/sh", "-c", "touch \"$0/started$RANK\"; sleep 60", dir_.string()};
  // Once both children run, SIGINT to this process (as a terminal's Ctrl-C would send it).
  std::thread interrupter([&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline &&
           !(std::filesystem::exists(dir_ / "started0") && std::filesystem::exists(dir_ / "started1"))) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(getpid(), SIGINT);
  });
  const auto start = std::chrono::steady_clock::now();
  const int code = kiln::launch_local_processes(options);
  interrupter.join();
  EXPECT_EQ(code, 128 + SIGINT);
  EXPECT_LT(seconds_since(start), 5.0);
  struct sigaction after {};
  sigaction(SIGINT, nullptr, &after);
  EXPECT_EQ(after.sa_handler, before.sa_handler);
}

TEST_F(DistributedLaunch, BadOptionsAndMissingProgramsThrow) {
  kiln::LaunchOptions options;
  options.nproc = 0;
  options.command = {"/bin/true"};
  auto message = error_of([&] { kiln::launch_local_processes(options); });
  ASSERT_TRUE(message.has_value());
  EXPECT_TRUE(contains(*message, "--nproc"));

  options.nproc = 2;
  options.command = {};
  EXPECT_TRUE(error_of([&] { kiln::launch_local_processes(options); }).has_value());

  options.command = {"/nonexistent/kiln-worker", "--x"};
  message = error_of([&] { kiln::launch_local_processes(options); });
  ASSERT_TRUE(message.has_value());
  EXPECT_TRUE(contains(*message, "/nonexistent/kiln-worker"));
}

TEST(PickFreePort, GivesAPortNothingListensOn) {
  const int port = kiln::pick_free_port("127.0.0.1");
  EXPECT_GT(port, 0);
  EXPECT_LE(port, 65535);
  EXPECT_TRUE(error_of([] { kiln::pick_free_port("no-such-host.invalid"); }).has_value());
}

}  // namespace
