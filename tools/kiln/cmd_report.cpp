// `kiln report RUN_DIR`: one self-contained HTML page about a training run (plots, samples,
// grid, diagnosis, settings) that opens offline; prints where it went.
#include <iostream>
#include <memory>
#include <string>

#include "commands.h"
#include "lab/run_report.h"

namespace kiln::cli {

void add_report_command(CLI::App& app) {
  auto run_dir = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("report",
                                 "Write RUN_DIR/report.html: plots, samples and settings of a training run");
  cmd->add_option("run_dir", *run_dir, "the run folder (holds run.toml)")->required();
  cmd->callback([run_dir] { std::cout << write_run_report(*run_dir).string() << "\n"; });
}

}  // namespace kiln::cli
