// How well a model draws the demo's world: every world prompt ("a red circle, white background")
// over a set of seeds, each picture read back (lab/prompt_adherence.h) and judged against its
// prompt. A base on which a person cannot tell the asked picture from a wrong one cannot show a
// burn either, so this is the base model's entry test (docs/demo.md states its figure).
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "lab/prompt_adherence.h"
#include "pipeline/generation_settings.h"

namespace kiln {

struct WorldDrawingRequest {
  std::filesystem::path model;
  // The architecture when `model` is a single file of the demo's (its base folder); else none.
  std::optional<std::filesystem::path> config;
  std::vector<std::string> prompts;  // default: every world prompt (world_prompts())
  std::vector<uint64_t> seeds{101, 102, 103, 104};  // not the seeds the demo draws and diagnoses with
  GenerationSettings settings;                       // sampler, steps, cfg, size
  torch::Device device = torch::kCPU;
  Rgb style_rim = kStyleRim;  // the look whose rim counts as style (data/synthetic.h)
  // When set, a contact sheet (one row per prompt, one column per seed) is written here as PNG.
  std::optional<std::filesystem::path> sheet;
};

// Every colour × shape × background prompt the plain world holds, in its caption form.
std::vector<std::string> world_prompts();

PromptAdherence score_world_drawing(const WorldDrawingRequest& request);

// The ceiling the VAE sets: `count` plain-world pictures (a seed the base never saw) encoded to
// their latent means and decoded, each read back against its caption.
PromptAdherence score_vae_round_trip(const std::filesystem::path& model, const std::filesystem::path& scratch,
                                     int count, int size);

}  // namespace kiln
