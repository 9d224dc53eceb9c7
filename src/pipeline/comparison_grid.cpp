#include "pipeline/comparison_grid.h"

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>

#include "diffusion/sampler.h"
#include "image/font.h"
#include "image/gif.h"
#include "image/grid.h"
#include "image/png.h"
#include "pipeline/a1111_parameters.h"
#include "pipeline/loaded_model.h"
#include "pipeline/txt2img.h"
#include "surgery/lora.h"
#include "surgery/lora_merge.h"
#include "util/error.h"
#include "util/sha256.h"

namespace kiln {

namespace fs = std::filesystem;

GridAxis parse_grid_axis(const std::string& name) {
  if (name == "checkpoint") return GridAxis::Checkpoint;
  if (name == "prompt") return GridAxis::Prompt;
  if (name == "seed") return GridAxis::Seed;
  if (name == "cfg") return GridAxis::Cfg;
  if (name == "sampler") return GridAxis::Sampler;
  throw Error("unknown grid axis '" + name + "' (checkpoint, prompt, seed, cfg, sampler)");
}

std::string grid_axis_name(GridAxis axis) {
  switch (axis) {
    case GridAxis::Checkpoint:
      return "checkpoint";
    case GridAxis::Prompt:
      return "prompt";
    case GridAxis::Seed:
      return "seed";
    case GridAxis::Cfg:
      return "cfg";
    case GridAxis::Sampler:
      return "sampler";
  }
  return "?";
}

namespace {

// The values of every axis, defaults filled in, and one label per value.
struct Axes {
  std::vector<fs::path> checkpoints;
  std::vector<std::string> prompts, samplers;
  std::vector<uint64_t> seeds;
  std::vector<double> cfgs;
  std::map<GridAxis, std::vector<std::string>> labels;

  size_t size(GridAxis axis) const { return labels.at(axis).size(); }
};

Axes resolve_axes(const GridRequest& r) {
  Axes a{r.checkpoints, r.prompts, r.samplers, r.seeds, r.cfgs, {}};
  if (a.checkpoints.empty()) throw Error("a grid needs at least one checkpoint");
  if (a.prompts.empty()) throw Error("a grid needs at least one prompt");
  if (a.seeds.empty()) a.seeds = {r.base.seed};
  if (a.cfgs.empty()) a.cfgs = {r.base.cfg};
  if (a.samplers.empty()) a.samplers = {r.base.sampler};
  if (!r.checkpoint_labels.empty() && r.checkpoint_labels.size() != a.checkpoints.size())
    throw Error(fmt::format("{} checkpoint labels for {} checkpoints", r.checkpoint_labels.size(),
                            a.checkpoints.size()));
  for (size_t i = 0; i < a.checkpoints.size(); ++i) {
    const auto& path = a.checkpoints[i];
    if (!fs::exists(path)) throw_file_error(path, "no such model file or folder");
    a.labels[GridAxis::Checkpoint].push_back(
        r.checkpoint_labels.empty() ? (fs::is_directory(path) ? path.filename() : path.stem()).string()
                                    : r.checkpoint_labels[i]);
  }
  a.labels[GridAxis::Prompt] = a.prompts;
  for (auto seed : a.seeds) a.labels[GridAxis::Seed].push_back(fmt::format("seed {}", seed));
  for (auto cfg : a.cfgs) a.labels[GridAxis::Cfg].push_back(fmt::format("cfg {}", cfg));
  for (const auto& s : a.samplers) a.labels[GridAxis::Sampler].push_back(a1111_sampler_name(s));

  if (r.rows == r.columns) throw Error("rows and columns must be different axes");
  if (r.zoom < 1 || r.zoom > 16) throw Error(fmt::format("zoom {} is not in 1..16", r.zoom));
  for (const auto& [axis, labels] : a.labels)
    if (axis != r.rows && axis != r.columns && labels.size() > 1)
      throw Error(fmt::format("{} {} values but {} is neither --rows nor --cols ({}, {})", labels.size(),
                              grid_axis_name(axis), grid_axis_name(axis), grid_axis_name(r.rows),
                              grid_axis_name(r.columns)));
  return a;
}

struct Cell {
  size_t checkpoint = 0;
  GenerationSettings settings;
  fs::path file;
};

// What identifies a checkpoint's weights for the cell cache: the file's SHA-256, or for a folder
// its path and the newest modification time inside.
std::string checkpoint_key(const fs::path& path) {
  if (!fs::is_directory(path)) return sha256_file(path);
  auto newest = fs::file_time_type::min();
  for (const auto& entry : fs::recursive_directory_iterator(path))
    if (entry.is_regular_file()) newest = std::max(newest, entry.last_write_time());
  return fs::canonical(path).string() + "@" + std::to_string(newest.time_since_epoch().count());
}

}  // namespace

GridResult make_comparison_grid(const GridRequest& r, const GridProgress& progress) {
  const Axes axes = resolve_axes(r);
  validate(r.base);
  const size_t rows = axes.size(r.rows), columns = axes.size(r.columns);

  // Every cell's settings: the row and column values over the base, the other axes' single value.
  std::vector<std::vector<Cell>> cells(rows, std::vector<Cell>(columns));
  auto assign = [&](Cell& cell, GridAxis axis, size_t i) {
    switch (axis) {
      case GridAxis::Checkpoint:
        cell.checkpoint = i;
        break;
      case GridAxis::Prompt:
        cell.settings.prompt = axes.prompts[i];
        break;
      case GridAxis::Seed:
        cell.settings.seed = axes.seeds[i];
        break;
      case GridAxis::Cfg:
        cell.settings.cfg = axes.cfgs[i];
        break;
      case GridAxis::Sampler:
        cell.settings.sampler = axes.samplers[i];
        break;
    }
  };
  const fs::path cell_dir = r.out_dir / "cells";
  fs::create_directories(cell_dir);
  // A LoRA changes every cell's pixels: its file hash and ratio join each checkpoint's key.
  std::string lora_key;
  for (const auto& text : r.loras) {
    const auto spec = parse_lora_spec(text);
    lora_key += fmt::format("+lora {} {}", sha256_file(spec.path), spec.ratio);
  }
  std::vector<std::string> model_keys;
  for (const auto& path : axes.checkpoints) model_keys.push_back(checkpoint_key(path) + lora_key);
  for (size_t row = 0; row < rows; ++row) {
    for (size_t column = 0; column < columns; ++column) {
      Cell& cell = cells[row][column];
      cell.settings = r.base;
      cell.settings.batch = 1;
      for (auto axis :
           {GridAxis::Checkpoint, GridAxis::Prompt, GridAxis::Seed, GridAxis::Cfg, GridAxis::Sampler})
        assign(cell, axis, 0);
      assign(cell, r.rows, row);
      assign(cell, r.columns, column);
      validate(cell.settings);
      // The key covers everything that changes the pixels; the parameters text is that list.
      const auto key = sha256_bytes(model_keys[cell.checkpoint] + "\n" +
                                    format_a1111_parameters(cell.settings, cell.settings.seed, {}));
      cell.file = cell_dir / (key.substr(0, 20) + ".png");
    }
  }

  GridResult result;
  int64_t steps_total = 0, steps_done = 0;
  const NoiseSchedule schedule;
  std::map<size_t, std::vector<Cell*>> missing;  // by checkpoint, so each model loads once
  for (auto& row : cells)
    for (auto& cell : row) {
      if (fs::exists(cell.file)) {
        ++result.reused;
        continue;
      }
      missing[cell.checkpoint].push_back(&cell);
      const auto& s = cell.settings;
      steps_total +=
          static_cast<int64_t>(make_sampler(s.sampler, schedule, {s.steps, s.spacing, s.karras})->steps());
    }
  for (const auto& [checkpoint, todo] : missing) {
    auto model = load_model(axes.checkpoints[checkpoint], r.config);
    if (!r.loras.empty()) {
      const auto targets = lora_targets(model.models);
      for (const auto& text : r.loras) {
        const auto spec = parse_lora_spec(text);
        apply_lora(model.models, read_lora(spec.path, targets), spec.ratio);
      }
    }
    model.models.unet->set_attention(r.attention);
    model.models.vae->set_attention(r.attention);
    to_device(model.models, r.device);
    Txt2Img txt2img(model);
    for (Cell* cell : todo) {
      const int64_t before = steps_done;
      auto image = txt2img.generate(cell->settings, [&](int64_t done, int64_t) {
        steps_done = before + done;
        if (progress) progress(steps_done, steps_total);
      });
      write_png(
          cell->file, image.at(0),
          {{"parameters", format_a1111_parameters(txt2img.resolved(cell->settings), cell->settings.seed, model.identity)}});
      ++result.generated;
    }
  }

  std::vector<std::vector<Image>> pictures(rows);
  for (size_t row = 0; row < rows; ++row)
    for (const auto& cell : cells[row])
      pictures[row].push_back(r.zoom > 1 ? scale_nearest(read_png(cell.file), r.zoom) : read_png(cell.file));
  const Font font = Font::load_default();
  GridLayout layout;
  layout.title = r.title;
  layout.row_labels = axes.labels.at(r.rows);
  layout.column_labels = axes.labels.at(r.columns);
  result.grid = r.out_dir / "grid.png";
  const auto summary = fmt::format(
      "kiln grid: rows {} ({}), columns {} ({})\n{}", grid_axis_name(r.rows),
      fmt::join(layout.row_labels, " | "), grid_axis_name(r.columns), fmt::join(layout.column_labels, " | "),
      format_a1111_parameters(cells[0][0].settings, cells[0][0].settings.seed, {}));
  write_png(result.grid, make_grid(pictures, layout, font), {{"parameters", summary}});

  if (r.gif) {
    if (r.rows != GridAxis::Checkpoint && r.columns != GridAxis::Checkpoint)
      throw Error("--gif steps through checkpoints: make checkpoint the rows or the columns");
    // Frame k: checkpoint k's cells side by side, labelled by the other axis, captioned with the
    // checkpoint's name.
    const bool by_row = r.rows == GridAxis::Checkpoint;
    const GridAxis other = by_row ? r.columns : r.rows;
    std::vector<Image> frames;
    for (size_t k = 0; k < axes.checkpoints.size(); ++k) {
      std::vector<std::vector<Image>> strip(1);
      for (size_t j = 0; j < axes.size(other); ++j)
        strip[0].push_back(by_row ? pictures[k][j] : pictures[j][k]);
      GridLayout frame_layout;
      frame_layout.column_labels = axes.labels.at(other);
      frames.push_back(
          add_caption(make_grid(strip, frame_layout, font), axes.labels.at(GridAxis::Checkpoint)[k], font));
    }
    result.gif = r.out_dir / "progress.gif";
    write_gif(*result.gif, frames, r.gif_delay_ms);
  }
  return result;
}

}  // namespace kiln
