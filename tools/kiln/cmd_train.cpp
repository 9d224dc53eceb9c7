// `kiln train RUN_FILE [--set section.key=value ...] [--out RUN_DIR] [--resume RUN_DIR]
// [--init-from CHECKPOINT]`: fine-tune the text encoder and the UNet as the run file says.
#include <torch/torch.h>

#include <atomic>
#include <csignal>
#include <iostream>

#include "commands.h"
#include "lab/run_report.h"
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
};

void run_train(const TrainCommand& c) {
  TrainOptions options;
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
    if (std::filesystem::exists(options.run_dir / "run.toml"))
      throw Error(options.run_dir.string() + " already holds a run: --resume it, or choose another --out");
  }
  if (!c.init_from.empty()) options.init_from = c.init_from;
  options.console = &std::cerr;
  options.stop_requested = [] { return g_stop_requested.load(); };
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  const auto result = train(config, options);
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
  cmd->callback([c] { run_train(*c); });
}

}  // namespace kiln::cli
