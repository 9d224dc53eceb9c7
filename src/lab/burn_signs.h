// The burn signs of a model's pictures against its base model's, and which part of the fine-tune
// each is blamed on. Every sign is a "burn-ward" number (larger is worse) with a threshold; crossing
// it makes the checkpoint over-trained. Thresholds were chosen on kiln's labelled burn benchmark
// (bench/bench_diagnosis.cpp; figures in docs/diagnose.md).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "image/image.h"
#include "lab/image_stats.h"
#include "lab/look.h"
#include "lab/prompt_adherence.h"

namespace kiln {

struct DiagnosisThresholds {
  double saturation_increase = 0.25;      // mean saturation +25 %
  double contrast_increase = 0.25;        // RMS contrast +25 %
  double high_frequency_increase = 0.50;  // high-frequency energy +50 %
  double diversity_drop = 0.30;           // seed diversity −30 %
  double adherence_drop = 0.25;  // prompt adherence (colour and shape right) −0.25, e.g. 0.9 → 0.65
  double style_bleed = 0.20;     // control pictures moved 20 % of the way to the training set's look
  double control_change = 0.15;  // control cells' mean RMS change from the base's (0-1 pixel scale)
  double prompt_drift = 0.30;    // control prompts' conditioning moved 30 % (relative L2)
};

enum class Part { Unet, TextEncoder };
const char* part_name(Part part);  // "UNet", "text encoder"

// What a model's pictures (and its text encoder's output) say, over the diagnosis cells.
struct ModelImageStats {
  // Statistics over the control cells: prompts without the activation phrase, where nothing should
  // change (every cell when no phrase is set).
  ImageStats mean;
  double diversity = 0;  // seed diversity, averaged over prompts
  // Over the control cells whose prompt names a synthetic-world colour and shape.
  std::optional<PromptAdherence> adherence;
  // Against the base model (absent for the base itself): mean RMS change per cell, same prompt and
  // seed, for control prompts and for prompts with the activation phrase (absent without such).
  std::optional<double> change_control, change_styled;
  // How much of the training pictures' look the control pictures gained, cell by cell against the
  // base's (look_gain_towards, at most 1 per cell), averaged: roughly the share of control
  // pictures that took on the training look (absent without training pictures).
  std::optional<double> style_bleed;
  // The control prompts' conditioning against the base text encoder's (absent for the base).
  std::optional<double> prompt_drift;

  // Kept to compare other models with; not written out.
  std::vector<Image> control_cells, styled_cells;
  std::vector<LookDescriptor> control_looks;  // one per control cell (with training pictures only)
};

// Whether `prompt` holds the activation phrase (case-insensitively): such prompts should change in a
// style fine-tune; the others are control prompts, where any change is a burn sign. False for an
// empty phrase.
bool mentions_phrase(const std::string& prompt, const std::string& phrase);

// One model's pictures of the diagnosis cells: per control prompt its pictures (the same seeds, in
// the same order, for every model compared), and the pictures of the prompts with the activation
// phrase (same order for every model).
struct DrawnCells {
  std::vector<std::string> control_prompts;
  std::vector<std::vector<Image>> control;  // [prompt][seed]
  std::vector<Image> styled;
};

// Everything ModelImageStats holds but prompt drift: statistics, seed diversity and adherence over
// the control cells; with a base (its own cells kept, measured with the same `training_look`), the
// change per cell and the style bleed towards `training_look`. Throws kiln::Error when the cells do
// not match the base's.
ModelImageStats measure_cells(DrawnCells cells, const ModelImageStats* base,
                              const std::optional<LookDescriptor>& training_look);

struct BurnSign {
  std::string name;  // "saturation", "style bleed", ...
  double value = 0;  // burn-ward: larger is worse
  double threshold = 0;
  std::string text;  // "saturation +38%"
  Part part = Part::Unet;
};

// Every sign that crossed its threshold, each with the part it is blamed on by default: prompt
// adherence and prompt drift the text encoder's, everything seen in the pictures the UNet's.
std::vector<BurnSign> crossed_signs(const ModelImageStats& now, const ModelImageStats& base,
                                    const DiagnosisThresholds& thresholds);

// The burn-ward value of the sign called `name` for `now` (0 when it cannot be measured).
double sign_value(const std::string& name, const ModelImageStats& now, const ModelImageStats& base);

// The threshold of the sign called `name` (throws kiln::Error for a name no sign has).
double sign_threshold(const std::string& name, const DiagnosisThresholds& thresholds);

// Thresholds at which every sign counts as crossed: what a benchmark keeps to judge any threshold later.
DiagnosisThresholds every_sign_thresholds();

// Fewest world cells over which a drop in prompt adherence counts: below it one picture moves the
// share by more than 12 points, and three cells (a grid's row) would call 100% -> 67% a burn.
constexpr int kMinAdherenceCells = 8;

// One number for "how much changed in the burn-ward directions": the sum of every sign's value
// over its threshold (so each sign weighs the same at its threshold).
double burn_score(const ModelImageStats& now, const ModelImageStats& base, const DiagnosisThresholds& thresholds);

}  // namespace kiln
