// `kiln demo`: the whole story on a tiny model in a synthetic world, on a laptop CPU, in minutes:
// a base model kiln trains itself (cached), style fine-tunes that stay healthy or burn, diagnoses,
// merges, a LoRA, and one report page; prints the report's path last.
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "commands.h"
#include "demo/demo.h"
#include "demo/shipped_base.h"
#include "demo/world_drawing.h"
#include "models/device.h"
#include "util/error.h"

namespace kiln::cli {
namespace {

struct DemoCommand {
  std::string out = "kiln-demo", base, cache, device = "cpu";
  bool quick = false, retrain_base = false, score_base = false, base_only = false;
};

std::vector<std::filesystem::path> where_the_shipped_base_may_be() {
  std::optional<std::filesystem::path> data_dir;
  if (const char* env = std::getenv("KILN_DATA_DIR"); env && *env) data_dir = env;
  return shipped_base_candidates(current_executable(), data_dir, KILN_SOURCE_DIR);
}

// How well the base draws its world: every world prompt at seeds the demo never uses.
void score_base_command(const DemoCommand& c) {
  WorldDrawingRequest request;
  if (c.base.empty()) {
    const auto shipped = find_shipped_base(where_the_shipped_base_may_be());
    if (!shipped) throw Error("kiln demo --score-base: no shipped demo base found; give --base DIR");
    request.model = *shipped;
  } else {
    request.model = c.base;
  }
  request.settings = demo_cell_settings(full_demo_scale());
  request.device = parse_device(c.device);
  std::filesystem::create_directories(c.out);
  request.sheet = std::filesystem::path(c.out) / "base-world.png";
  const auto score = score_world_drawing(request);
  std::cout << fmt::format(
      "{}: {} cells ({} world prompts x {} seeds): as asked (colour, shape, background, clean) {:.1f}%; "
      "colour {:.1f}%, shape {:.1f}%, background {:.1f}%, clean {:.1f}%, style-free {:.1f}%\n",
      request.model.string(), score.cells, world_prompts().size(), request.seeds.size(), 100 * score.correct,
      100 * score.colour, 100 * score.shape, 100 * score.background, 100 * score.clean, 100 * score.style_free);
  std::cerr << "contact sheet: " << request.sheet->string() << "\n";
  const auto vae = score_vae_round_trip(request.model, std::filesystem::path(c.out) / "vae-round-trip", 192,
                                        static_cast<int>(request.settings.width));
  std::cout << fmt::format("VAE round trip of {} world pictures: as asked {:.1f}%, clean {:.1f}%\n", vae.cells,
                           100 * vae.correct, 100 * vae.clean);
}

void run_demo_command(const DemoCommand& c) {
  if (c.score_base) return score_base_command(c);
  DemoOptions options;
  options.out_dir = c.out;
  if (!c.base.empty()) options.base = c.base;
  if (!c.cache.empty()) options.cache_dir = c.cache;
  options.quick = c.quick;
  options.shipped_base_candidates = where_the_shipped_base_may_be();
  options.retrain_base = c.retrain_base;
  options.base_only = c.base_only;
  options.device = parse_device(c.device);
  options.console = &std::cerr;
  const auto result = run_demo(options);
  std::cerr << fmt::format("\nkiln demo finished in {:.0f} s ({:.1f} min). {}:\n", result.seconds,
                           result.seconds / 60.0, c.base_only ? "The base model" : "Open the report");
  std::cout << (c.base_only ? result.base : result.report).string() << "\n";
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
  cmd->add_flag("--base-only", c->base_only,
                "stop once the base model is ready (with --retrain-base: train a base to ship; an interrupted "
                "training resumes when run again)");
  cmd->add_flag("--score-base", c->score_base,
                "only measure how well the base (--base, else the shipped one) draws every world prompt; writes "
                "OUT/base-world.png");
  cmd->add_flag("--quick", c->quick, "every step at a tiny size (seconds of training; for tests and CI)");
  cmd->callback([c] { run_demo_command(*c); });
}

}  // namespace kiln::cli
