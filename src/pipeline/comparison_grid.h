// `kiln grid`: the same prompts and seeds through several checkpoints (or any two of checkpoint,
// prompt, seed, cfg, sampler as rows and columns), assembled into one labelled picture and, on
// request, a GIF that steps through the checkpoints. Every cell is kept as a PNG keyed by what
// produced it, so a grid re-run after adding a checkpoint only generates the new cells.
#pragma once
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "models/attention.h"
#include "pipeline/generation_settings.h"

namespace kiln {

enum class GridAxis { Checkpoint, Prompt, Seed, Cfg, Sampler };
GridAxis parse_grid_axis(const std::string& name);  // checkpoint | prompt | seed | cfg | sampler
std::string grid_axis_name(GridAxis axis);

struct GridRequest {
  std::vector<std::filesystem::path> checkpoints;
  std::vector<std::string> checkpoint_labels;  // empty: the file or folder names
  std::optional<std::filesystem::path> config;
  std::vector<std::string> prompts;
  std::vector<uint64_t> seeds;        // empty: base.seed
  std::vector<double> cfgs;           // empty: base.cfg
  std::vector<std::string> samplers;  // empty: base.sampler
  GenerationSettings base;            // negative, steps, size, clip skip, ... for every cell
  GridAxis rows = GridAxis::Checkpoint;
  GridAxis columns = GridAxis::Prompt;
  std::string title;
  std::filesystem::path out_dir;
  int zoom = 1;       // cells drawn zoom x zoom times larger (nearest neighbour), for tiny models
  bool gif = false;  // OUT/progress.gif: one labelled frame per checkpoint
  int gif_delay_ms = 800;
  AttentionOptions attention;
  torch::Device device = torch::kCPU;
  std::vector<std::string> loras;  // "FILE[:ratio]" applied to every checkpoint (part of the cell key)
};

struct GridResult {
  std::filesystem::path grid;
  std::optional<std::filesystem::path> gif;
  int64_t generated = 0;  // cells sampled in this run
  int64_t reused = 0;     // cells found from an earlier run
};

// Progress over the sampling steps of the cells still to generate.
using GridProgress = std::function<void(int64_t steps_done, int64_t steps_total)>;

// Checks everything (axes, values, sizes, that each checkpoint exists) before generating anything;
// kiln::Error names the problem. An axis that is neither rows nor columns takes one value.
GridResult make_comparison_grid(const GridRequest& request, const GridProgress& progress = {});

}  // namespace kiln
