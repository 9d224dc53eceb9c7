// The kiln subcommands: each file adds one subcommand to the CLI and runs it through the library.
#pragma once
#include <CLI/CLI.hpp>

namespace kiln::cli {

void add_inspect_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_init_command(CLI::App& app);
void add_sample_command(CLI::App& app);
void add_grid_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_merge_command(CLI::App& app);
void add_lora_command(CLI::App& app);
void add_diagnose_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_demo_command(CLI::App& app);

}  // namespace kiln::cli
