// kiln: the command-line entry point. Parses the subcommand, runs it, and turns any error into
// one line on stderr and a non-zero exit.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <exception>
#include <iostream>

#include "commands.h"
#include "util/error.h"
#include "util/threads.h"

int main(int argc, char** argv) {
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG, which kiln reports and cleans up
  // after like a full disk, instead of the process dying mid-save.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"kiln: fine-tune Stable Diffusion 1.x and see what training does to it"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kiln " KILN_VERSION " (libtorch " TORCH_VERSION ")");
  // Also accepted after the subcommand (kiln train run.toml --threads 2).
  app.fallthrough();
  app.add_option_function<int>(
         "--threads", [](int threads) { kiln::configure_threads(threads); },
         "CPU threads for torch (default: $KILN_THREADS, else every core)")
      ->trigger_on_parse();
  kiln::cli::add_inspect_command(app);
  kiln::cli::add_convert_command(app);
  kiln::cli::add_init_command(app);
  kiln::cli::add_sample_command(app);
  kiln::cli::add_grid_command(app);
  kiln::cli::add_train_command(app);
  kiln::cli::add_merge_command(app);
  kiln::cli::add_lora_command(app);
  kiln::cli::add_diagnose_command(app);
  kiln::cli::add_report_command(app);
  kiln::cli::add_demo_command(app);
  try {
    kiln::configure_threads();
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kiln::Error& e) {
    std::cerr << "kiln: error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "kiln: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "kiln: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
