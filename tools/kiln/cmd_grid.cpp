// `kiln grid`: checkpoints x prompts (or any two of checkpoint, prompt, seed, cfg, sampler) in one
// labelled PNG, optionally a GIF through the checkpoints; cells are reused across runs.
#include <torch/torch.h>

#include <fmt/format.h>

#include <iostream>
#include <optional>

#include "models/device.h"
#include "commands.h"
#include "pipeline/comparison_grid.h"
#include "sample_options.h"
#include "util/progress.h"

namespace kiln::cli {
namespace {

struct GridCommand {
  SampleOptions sample;
  std::vector<std::string> models, labels, prompts, samplers;
  std::vector<uint64_t> seeds;
  std::vector<double> cfgs;
  std::string rows = "checkpoint", columns = "prompt", title, out = "grid";
  bool gif = false;
  int gif_delay_ms = 800;
  int zoom = 1;
};

void run_grid(const GridCommand& c) {
  GridRequest request;
  for (const auto& m : c.models) request.checkpoints.emplace_back(m);
  request.checkpoint_labels = c.labels;
  if (!c.sample.config.empty()) request.config = c.sample.config;
  request.prompts = c.prompts;
  request.seeds = c.seeds;
  request.cfgs = c.cfgs;
  request.samplers = c.samplers;
  request.base = c.sample.settings();
  request.rows = parse_grid_axis(c.rows);
  request.columns = parse_grid_axis(c.columns);
  request.title = c.title;
  request.out_dir = c.out;
  request.gif = c.gif;
  request.gif_delay_ms = c.gif_delay_ms;
  request.zoom = c.zoom;
  request.attention = {parse_attention_kernel(c.sample.attention)};
  request.loras = c.sample.loras;
  request.device = parse_device(c.sample.device);
  std::optional<ProgressBar> progress;
  auto result = make_comparison_grid(request, [&](int64_t done, int64_t total) {
    if (!progress) progress.emplace(std::cerr, "grid", total);
    progress->update(done);
  });
  if (progress) progress->finish();
  std::cerr << fmt::format("{} cells generated, {} reused\n", result.generated, result.reused);
  std::cout << result.grid.string() << "\n";
  if (result.gif) std::cout << result.gif->string() << "\n";
}

}  // namespace

void add_grid_command(CLI::App& app) {
  auto c = std::make_shared<GridCommand>();
  auto* cmd = app.add_subcommand(
      "grid", "Compare checkpoints, prompts, seeds, cfg or samplers in one labelled image");
  cmd->add_option("--models,-m", c->models, "checkpoints (files or diffusers folders)")->required();
  cmd->add_option("--labels", c->labels, "one label per checkpoint (default: file names)");
  cmd->add_option("--prompt,-p", c->prompts, "prompts (repeat the option or list several)")->required();
  cmd->add_option("--seeds", c->seeds, "seeds (default: --seed)");
  cmd->add_option("--cfgs", c->cfgs, "guidance scales (default: --cfg)");
  cmd->add_option("--samplers", c->samplers, "samplers (default: --sampler)");
  cmd->add_option("--rows", c->rows, "axis down the grid: checkpoint, prompt, seed, cfg, sampler")
      ->capture_default_str();
  cmd->add_option("--cols", c->columns, "axis across the grid")->capture_default_str();
  cmd->add_option("--title", c->title, "title above the grid");
  cmd->add_option("--out,-o", c->out, "output folder (grid.png, progress.gif, cells/)")
      ->capture_default_str();
  cmd->add_flag("--gif", c->gif, "also write progress.gif, one frame per checkpoint");
  cmd->add_option("--zoom", c->zoom, "draw cells N times larger (nearest neighbour; tiny models)")
      ->capture_default_str();
  cmd->add_option("--gif-delay", c->gif_delay_ms, "milliseconds per GIF frame")->capture_default_str();
  cmd->add_option("--lora", c->sample.loras, "LoRA FILE[:ratio] applied to every checkpoint (repeatable)");
  add_sample_options(*cmd, c->sample, /*require_model=*/false);
  c->sample.seed = 0;  // a grid compares like with like: a fixed seed unless --seed/--seeds say otherwise
  cmd->callback([c] { run_grid(*c); });
}

}  // namespace kiln::cli
