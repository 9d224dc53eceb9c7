// `kiln train RUN_FILE [--set section.key=value ...] [--out RUN_DIR] [--resume RUN_DIR]
// [--init-from CHECKPOINT] [--device cpu|cuda[:N]] [--nproc N]`: fine-tune the text encoder and the
// UNet as the run file says, in one process or data-parallel in several (c10d: Gloo on CPU, NCCL on
// GPU). Under torchrun (RANK, WORLD_SIZE, ... set) each process joins the group torchrun describes.
#include <torch/torch.h>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <iostream>
#include <iterator>

#include "commands.h"
#include "lab/run_report.h"
#include "models/device.h"
#include "train/distributed.h"
#include "train/process_launcher.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "util/error.h"

namespace kiln::cli {
namespace {

// The one piece of process-wide state: a signal handler can only reach a global. The first Ctrl-C
// asks the trainer to save and stop; a second one ends the process at once.
std::atomic<bool> g_stop_requested{false};

void on_interrupt(int) {
  if (g_stop_requested.exchange(true)) std::_Exit(130);
}

struct TrainCommand {
  std::string run_file;
  std::vector<std::string> overrides;
  std::string out;
  std::string resume;
  std::string init_from;
  std::string device = "cpu";
  int nproc = 1;
  int timeout_minutes = 120;
};

// This process's own command line without --nproc: what each worker runs.
std::vector<std::string> worker_command() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t start = 0; start < all.size();) {
    const auto end = all.find('\0', start);
    args.push_back(all.substr(start, end - start));
    start = end == std::string::npos ? all.size() : end + 1;
  }
  if (args.empty()) throw Error("cannot read this process's command line (/proc/self/cmdline)");
  std::vector<std::string> command{std::filesystem::read_symlink("/proc/self/exe").string()};
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--nproc") {
      ++i;
      continue;
    }
    if (args[i].starts_with("--nproc=")) continue;
    command.push_back(args[i]);
  }
  return command;
}

void run_train(const TrainCommand& c) {
  if (c.nproc < 1) throw Error("--nproc must be at least 1");
  const auto env = read_distributed_environment();
  if (c.nproc > 1 && env.world_size > 1)
    throw Error("--nproc given inside a process group (RANK/WORLD_SIZE are set): use one or the other");
  if (c.nproc > 1) {
    // The launcher: N copies of this command, one per rank; the workers do the work and the talking.
    LaunchOptions launch;
    launch.nproc = c.nproc;
    launch.command = worker_command();
    const int code = launch_local_processes(launch);
    if (code != 0) throw Error(fmt::format("training processes ended with exit code {}", code));
    return;
  }
  auto device = parse_device(c.device);
  // Under a launcher, plain "cuda" means this process's own GPU.
  if (device.is_cuda() && c.device == "cuda" && env.world_size > 1)
    device = parse_device(fmt::format("cuda:{}", env.local_rank));
  std::unique_ptr<DataParallelGroup> group;
  if (env.world_size > 1)
    group = DataParallelGroup::join(env, device, std::chrono::minutes(c.timeout_minutes));
  const bool main_rank = env.rank == 0;
  TrainOptions options;
  options.device = device;
  options.group = group.get();
  RunConfig config;
  if (!c.resume.empty()) {
    // A resumed run keeps its own settings; --set changes them from here on (e.g. more epochs,
    // text encoder frozen). A run file given as well replaces them.
    options.run_dir = c.resume;
    options.resume = true;
    const auto file =
        c.run_file.empty() ? std::filesystem::path(c.resume) / "run.toml" : std::filesystem::path(c.run_file);
    config = read_run_config(file, c.overrides);
  } else {
    if (c.run_file.empty()) throw Error("give a RUN_FILE (or --resume RUN_DIR)");
    config = read_run_config(c.run_file, c.overrides);
    options.run_dir = c.out.empty() ? std::filesystem::path("runs") / std::filesystem::path(c.run_file).stem()
                                    : std::filesystem::path(c.out);
    if (main_rank && std::filesystem::exists(options.run_dir / "run.toml"))
      throw Error(options.run_dir.string() + " already holds a run: --resume it, or choose another --out");
  }
  if (!c.init_from.empty()) options.init_from = c.init_from;
  options.console = main_rank ? &std::cerr : nullptr;
  options.stop_requested = [] { return g_stop_requested.load(); };
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  const auto result = train(config, options);
  if (!main_rank) {
    if (result.interrupted) throw Error(fmt::format("rank {}: training interrupted", env.rank));
    return;
  }
  std::cerr << (result.interrupted ? "interrupted at" : "finished at") << " epoch " << result.epochs_done
            << ", step " << result.global_step << "\n";
  for (const auto& path : result.checkpoints) std::cout << path.string() << "\n";
  // The run's page, rewritten after every session (kiln report RUN_DIR redraws it any time).
  std::cerr << "report: " << write_run_report(options.run_dir).string() << "\n";
  if (result.interrupted)
    throw Error("training interrupted; continue with: kiln train --resume " + options.run_dir.string());
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto c = std::make_shared<TrainCommand>();
  auto* cmd = app.add_subcommand("train", "Fine-tune the text encoder and the UNet (see docs/run-file.md)");
  cmd->add_option("RUN_FILE", c->run_file, "TOML run file");
  cmd->add_option("--set", c->overrides, "override a setting: section.key=value (repeatable)");
  cmd->add_option("--out,-o", c->out, "run folder (default: runs/<run file name>)");
  cmd->add_option("--resume", c->resume, "continue the run in this folder from its newest checkpoint");
  cmd->add_option("--init-from", c->init_from, "start from this checkpoint instead of model.checkpoint");
  cmd->add_option("--device", c->device, "cpu, cuda or cuda:N (under --nproc/torchrun, cuda = each rank's own GPU)")
      ->capture_default_str();
  cmd->add_option("--nproc", c->nproc,
                  "data-parallel processes on this machine (data.batch_size is per process)")
      ->capture_default_str();
  cmd->add_option("--timeout", c->timeout_minutes,
                  "minutes a process waits for the others (rendezvous, gradients, a checkpoint being written)")
      ->capture_default_str();
  cmd->callback([c] { run_train(*c); });
}

}  // namespace kiln::cli
