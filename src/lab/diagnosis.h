// Burn diagnostics for a run: which part of a fine-tune is over-trained, and from which checkpoint.
// The same prompt × seed cells are drawn by the base model and every checkpoint; their pictures
// (statistics, change from the base, drift towards the training set's look, prompt adherence),
// the text encoder's output for the same prompts and the weights themselves are compared, and the
// swap test (base text encoder + trained UNet, trained text encoder + base UNet) attributes each
// burn sign to the part that causes it.
#pragma once
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "lab/burn_signs.h"
#include "lab/weight_drift.h"
#include "pipeline/generation_settings.h"

namespace kiln {

// Last and Flagged run the swap test only where both parts trained (a frozen part has nothing to blame).
enum class SwapTestPolicy {
  Off,
  Last,     // the last checkpoint only
  Flagged,  // every checkpoint that shows a burn sign, and the last
  Every,    // every checkpoint (to study the signs, as the burn benchmark does)
};

struct DiagnosisRequest {
  std::filesystem::path base;                      // the model the run started from
  std::vector<std::filesystem::path> checkpoints;  // in training order
  std::vector<std::string> labels;                 // one per checkpoint
  std::optional<std::filesystem::path> config;     // for non-SD-1.5 architectures
  std::vector<std::string> prompts{"a photo of a person", "black and white circles"};
  std::vector<uint64_t> seeds{1, 2, 3};
  // Prompts containing it (case-insensitively) are the style's: they should change. The others are
  // the control prompts, where any change is a burn sign. Empty: every prompt is a control prompt.
  std::string activation_phrase;
  // The training pictures (folders or files; at most kMaxLookPictures, evenly spread, are read),
  // whose look the control pictures must not take on. Empty: no style-bleed measure.
  std::vector<std::filesystem::path> training_images;
  GenerationSettings settings;  // sampler, steps, cfg, size for every cell
  DiagnosisThresholds thresholds;
  SwapTestPolicy swap_test = SwapTestPolicy::Flagged;
  torch::Device device = torch::kCPU;  // where the pictures are generated
};

inline constexpr size_t kMaxLookPictures = 64;

// Base text encoder + trained UNet, and trained text encoder + base UNet, through the same cells.
struct SwapTest {
  ModelImageStats trained_unet_base_te, trained_te_base_unet;
};

struct CheckpointDiagnosis {
  std::string label;
  std::filesystem::path path;
  std::vector<DriftGroup> drift;  // groups then component totals
  ModelImageStats images;
  std::optional<SwapTest> swap;
  std::vector<BurnSign> signs;  // those that crossed, each with the part it is blamed on
  std::string verdict;
};

struct Diagnosis {
  ModelImageStats base;
  std::vector<CheckpointDiagnosis> checkpoints;
  DiagnosisThresholds thresholds;  // those the verdicts were drawn with
  // One line per part ("UNet over-trained from e0012: ..."), then the recommended checkpoint.
  std::vector<std::string> summary;
  // The last checkpoint before the first burn sign; nullopt when the first already shows one.
  std::optional<size_t> recommended;
  nlohmann::json to_json() const;
};

using DiagnosisProgress = std::function<void(const std::string& what)>;

Diagnosis diagnose(const DiagnosisRequest& request, const DiagnosisProgress& progress = {});

// The training pictures' mean look (folders or files; at most kMaxLookPictures, evenly spread), each
// scaled and centre-cropped to width × height; nullopt when there are none.
std::optional<LookDescriptor> training_look(const std::vector<std::filesystem::path>& sources, int width,
                                            int height);

// The signs of `checkpoint` against the base, each blamed on a part: by the swap test when it ran
// for this checkpoint (the part whose half-swapped model reproduces more of the sign), else by
// default (burn_signs.h) unless that part did not train (zero drift) and the other did.
std::vector<BurnSign> attributed_signs(const CheckpointDiagnosis& checkpoint, const ModelImageStats& base,
                                       const DiagnosisThresholds& thresholds);

// "e0040: UNet over-trained: saturation +38%, seed diversity -55%; text encoder within range
// (drift: ...)"; a part that did not train is "unchanged".
std::string checkpoint_verdict(const CheckpointDiagnosis& checkpoint, const ModelImageStats& base,
                               const DiagnosisThresholds& thresholds);

// The run's summary lines and recommended checkpoint from its checkpoints' signs (filled in).
void summarise(Diagnosis& diagnosis);

// diagnose.json and SVG plots into `out_dir`: image_statistics.svg, change_and_bleed.svg,
// weight_drift.svg (component totals per checkpoint), weight_drift_blocks.svg (drift per block, one
// line per checkpoint) and prompt_adherence.svg (only when measured; a stale one is removed).
void write_diagnosis(const Diagnosis& diagnosis, const std::filesystem::path& out_dir);

}  // namespace kiln
