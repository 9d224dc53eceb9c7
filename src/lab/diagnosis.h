// Burn diagnostics for a run: which part of a fine-tune is over-trained, from weight drift and from
// image statistics of the same prompt × seed cells across checkpoints, with the swap test automated
// (base text encoder + trained UNet, trained text encoder + base UNet) to attribute the change.
#pragma once
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "lab/image_stats.h"
#include "lab/prompt_adherence.h"
#include "lab/weight_drift.h"
#include "pipeline/generation_settings.h"

namespace kiln {

// When a change from the base counts as a burn sign (relative changes, but for prompt adherence an
// absolute drop of a fraction; documented in docs/diagnose.md). A checkpoint is called over-trained
// when any threshold is crossed.
struct DiagnosisThresholds {
  double saturation_increase = 0.25;      // mean saturation +25 %
  double contrast_increase = 0.25;        // RMS contrast +25 %
  double high_frequency_increase = 0.50;  // high-frequency energy +50 %
  double diversity_drop = 0.30;           // seed diversity −30 %
  double adherence_drop = 0.25;  // prompt adherence (colour and shape right) −0.25, e.g. 0.9 → 0.6
};

struct DiagnosisRequest {
  std::filesystem::path base;                      // the model the run started from
  std::vector<std::filesystem::path> checkpoints;  // in training order
  std::vector<std::string> labels;                 // one per checkpoint
  std::optional<std::filesystem::path> config;     // for non-SD-1.5 architectures
  std::vector<std::string> prompts{"a photo of a person", "black and white circles"};
  std::vector<uint64_t> seeds{1, 2, 3};
  GenerationSettings settings;  // sampler, steps, cfg, size for every cell
  DiagnosisThresholds thresholds;
  bool swap_test = true;  // on the last checkpoint
  torch::Device device = torch::kCPU;  // where the pictures are generated
};

struct ModelImageStats {
  ImageStats mean;       // over every prompt × seed cell
  double diversity = 0;  // seed diversity, averaged over prompts
  // Over the cells whose prompt names a synthetic-world colour and shape (parse_world_prompt);
  // absent when no prompt does.
  std::optional<PromptAdherence> adherence;
};

struct CheckpointDiagnosis {
  std::string label;
  std::filesystem::path path;
  std::vector<DriftGroup> drift;  // groups then component totals
  ModelImageStats images;
  std::string verdict;
};

struct Diagnosis {
  ModelImageStats base;
  std::vector<CheckpointDiagnosis> checkpoints;
  // Swap test on the last checkpoint: images of base TE + trained UNet, and trained TE + base UNet.
  std::optional<ModelImageStats> trained_unet_base_te, trained_te_base_unet;
  std::string attribution;  // which part the swap test blames, in words
  // Which part the swap test blames for the last checkpoint's prompt-adherence drop, in words;
  // empty unless that drop crossed thresholds.adherence_drop and the swap test ran.
  std::string adherence_attribution;
  DiagnosisThresholds thresholds;  // those the verdicts were drawn with
  nlohmann::json to_json() const;
};

using DiagnosisProgress = std::function<void(const std::string& what)>;

Diagnosis diagnose(const DiagnosisRequest& request, const DiagnosisProgress& progress = {});

// "epoch 40: UNet over-trained: saturation +38%, seed diversity -55%; text encoder within range
// (drift: ...)". Image burn signs are blamed on the UNet and an adherence drop on the text encoder,
// each unless that part did not train (zero drift); a part that did not train is "unchanged".
std::string checkpoint_verdict(const CheckpointDiagnosis& checkpoint, const ModelImageStats& base,
                               const DiagnosisThresholds& thresholds);

// The request for a kiln run folder: its base model (run.toml) and its checkpoints (not -ema).
DiagnosisRequest diagnosis_request_for_run(const std::filesystem::path& run_dir);

// diagnose.json and SVG plots into `out_dir`: image_statistics.svg, weight_drift.svg (component
// totals per checkpoint), weight_drift_blocks.svg (drift per block, one line per checkpoint) and
// prompt_adherence.svg (only when measured; a stale one is removed otherwise).
void write_diagnosis(const Diagnosis& diagnosis, const std::filesystem::path& out_dir);

}  // namespace kiln
