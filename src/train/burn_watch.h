// The burn watch of `kiln train` ([diagnose] in the run file): at every checkpoint, the cheap signs
// of `kiln diagnose` on what the run draws anyway. The run's sample prompts are drawn once by the
// base model before the first step (samples/base/), and at each checkpoint the samples are compared
// with those: change per cell (prompts with and without the activation phrase), style bleed
// towards the training pictures' look, image statistics, prompt adherence where the prompts allow,
// and the text encoder's drift on the control prompts. Signs are blamed on a part by the default
// rules (no swap test here: `kiln diagnose` runs it); a frozen part is never blamed.
#pragma once
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "lab/burn_signs.h"

namespace kiln {

struct BurnWatchSettings {
  std::string activation_phrase;                    // prompts with it are expected to change
  std::vector<std::filesystem::path> training_images;  // folders: the look that must not bleed
  int width = 512, height = 512;                    // the samples' size (the look is compared at it)
  bool te_trains = true, unet_trains = true;
  DiagnosisThresholds thresholds;
};

// The pictures of one round of samples, in the prompt file's order, grouped as the watch compares
// them. Pass each prompt's pictures (one per seed of its batch).
class SampleRound {
 public:
  explicit SampleRound(std::string activation_phrase) : phrase_(std::move(activation_phrase)) {}
  void add(const std::string& prompt, std::vector<Image> pictures);
  DrawnCells take() { return std::move(cells_); }
  const std::vector<std::string>& control_prompts() const { return cells_.control_prompts; }

 private:
  std::string phrase_;
  DrawnCells cells_;
};

struct BurnCheck {
  std::vector<BurnSign> signs;            // crossed, each with its part
  std::map<std::string, double> values;   // for the metrics log: "diagnose/style_bleed", ...
  std::string line;                       // "e0012: UNet burning: ...; text encoder within range"
  bool burning() const { return !signs.empty(); }
};

class BurnWatch {
 public:
  // `base_cells`: the base model's samples; `base_conditioning`: its text encoder's output for the
  // control prompts (prompt_drift.h).
  BurnWatch(BurnWatchSettings settings, DrawnCells base_cells, std::vector<torch::Tensor> base_conditioning);
  BurnCheck check(const std::string& label, DrawnCells cells, const std::vector<torch::Tensor>& conditioning) const;

 private:
  BurnWatchSettings settings_;
  ModelImageStats base_;
  std::optional<LookDescriptor> training_look_;
  std::vector<torch::Tensor> base_conditioning_;
};

}  // namespace kiln
