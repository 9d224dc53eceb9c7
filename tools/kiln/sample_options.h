// The generation options `kiln sample` and `kiln grid` share, with one set of names and defaults.
#pragma once
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "models/attention.h"
#include "pipeline/generation_settings.h"
#include "pipeline/loaded_model.h"

namespace kiln::cli {

struct SampleOptions {
  std::string model;
  std::string config;
  std::string negative;
  std::string sampler = GenerationSettings{}.sampler;
  std::string spacing;
  std::string prediction;  // empty: the model's
  bool karras = false;
  int64_t steps = GenerationSettings{}.steps;
  double cfg = GenerationSettings{}.cfg;
  int64_t seed = -1;  // -1: a random seed, printed and recorded in each PNG
  int64_t width = 512, height = 512;
  int64_t clip_skip = 1;
  int64_t batch = 1;
  std::string attention = "auto";
  std::string device = "cpu";  // cpu | cuda | cuda:N
  // FILE or FILE:RATIO, applied in order after loading. Only `kiln sample` sets it: grid cells are
  // cached by checkpoint hash, which a runtime LoRA would not change.
  std::vector<std::string> loras;

  GenerationSettings settings() const;  // resolves a random seed once
  // Loads --model (with --config), adds the --lora deltas into its weights and applies --attention
  // to its UNet and VAE.
  LoadedModel load(const std::string& model_path = "") const;
};

// `require_model` false: the command takes its models another way (grid's --models).
void add_sample_options(CLI::App& cmd, SampleOptions& options, bool require_model = true);

}  // namespace kiln::cli
