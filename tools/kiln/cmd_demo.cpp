// `kiln demo`: the whole story on a tiny model in a synthetic world, on a laptop CPU, in minutes:
// a base model kiln trains itself (cached), style fine-tunes that stay healthy or burn, diagnoses,
// merges, a LoRA, and one report page; prints the report's path last.
#include <fmt/format.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "commands.h"
#include "demo/demo.h"
#include "models/device.h"

namespace kiln::cli {
namespace {

struct DemoCommand {
  std::string out = "kiln-demo", base, cache, device = "cpu";
  bool quick = false, retrain_base = false;
};

void run_demo_command(const DemoCommand& c) {
  DemoOptions options;
  options.out_dir = c.out;
  if (!c.base.empty()) options.base = c.base;
  if (!c.cache.empty()) options.cache_dir = c.cache;
  options.quick = c.quick;
  options.shipped_base = std::filesystem::path(KILN_DEMO_BASE_DIR);
  options.retrain_base = c.retrain_base;
  options.device = parse_device(c.device);
  options.console = &std::cerr;
  const auto result = run_demo(options);
  std::cerr << fmt::format("\nkiln demo finished in {:.0f} s ({:.1f} min). Open the report:\n", result.seconds,
                           result.seconds / 60.0);
  std::cout << result.report.string() << "\n";
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto c = std::make_shared<DemoCommand>();
  auto* cmd = app.add_subcommand(
      "demo", "The whole story on a tiny model: healthy and burnt fine-tunes, diagnoses, merges, a LoRA, a report");
  cmd->add_option("--out,-o", c->out, "output folder")->capture_default_str();
  cmd->add_option("--base", c->base, "use this trained demo base (diffusers folder) instead of the cached one");
  cmd->add_option("--cache", c->cache, "where the base model is kept (default $XDG_CACHE_HOME/kiln or ~/.cache/kiln)");
  cmd->add_flag("--retrain-base", c->retrain_base, "train the base model again even when one is cached");
  cmd->add_option("--device", c->device, "cpu, cuda or cuda:N: where the experiments train and draw")
      ->capture_default_str();
  cmd->add_flag("--quick", c->quick, "every step at a tiny size (seconds of training; for tests and CI)");
  cmd->callback([c] { run_demo_command(*c); });
}

}  // namespace kiln::cli
