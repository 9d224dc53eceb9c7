// kiln's labelled burn benchmark: fine-tunes of the demo base in the synthetic world where the
// truth comes from the world itself. kiln can read back any picture of a world prompt (colour,
// shape, background, clean drawing, the style's look), so for every checkpoint it knows whether
// the pictures of prompts without the activation phrase are still right and still style-free. A
// checkpoint is "visibly damaged" when either share falls by the damage margin from the base's.
// The diagnosis must name the part that trained, flag no later than the first damaged checkpoint,
// and flag nothing on gentle runs.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "demo/demo_world.h"
#include "lab/burn_signs.h"

namespace kiln {

enum class BurnRunKind { TextEncoder, Unet, Both, Gentle };
const char* burn_run_kind_name(BurnRunKind kind);  // "te", "unet", "both", "gentle"

struct BurnBenchmarkRun {
  std::string name;    // "checks-unet-1e-3-s2"
  size_t look = 0;     // index into synthetic_style_looks()
  uint64_t seed = 1;   // the style set's and the training's
  BurnRunKind kind = BurnRunKind::Unet;
  double te_lr = 0, unet_lr = 0;  // 0: frozen
};

struct BurnBenchmarkOptions {
  std::filesystem::path base;     // the demo base (diffusers folder)
  std::filesystem::path out_dir;  // one run folder per run, results.json
  DemoWorldSize world;            // size of the pictures, shape sizes, style set size
  int64_t epochs = 24, every = 6, batch_size = 4;
  int64_t steps = 16;                           // sampling steps of every cell
  std::vector<uint64_t> diagnosis_seeds{1, 2, 3, 4};
  std::vector<uint64_t> truth_seeds{201};  // 45 world prompts: one picture is 2.2 points of a share
  std::vector<std::string> truth_prompts;  // the world prompts the truth is read on (empty: every one)
  double damage_margin = 0.2;  // a share of correct or of style-free pictures falling by this much
  DiagnosisThresholds thresholds;
  std::ostream* console = nullptr;
};

// The full benchmark's runs: every look × {te, unet, both, gentle} × two seeds, two rates each.
std::vector<BurnBenchmarkRun> burn_benchmark_runs();

struct CheckpointOutcome {
  std::string label;
  double correct = 0, style_free = 0;  // truth: shares over the world prompts without the phrase
  bool damaged = false;
  std::vector<BurnSign> all_signs;  // every sign with its burn-ward value and part (zero thresholds)
  std::vector<BurnSign> signs;      // those over the thresholds judged with
};

struct BurnRunOutcome {
  BurnBenchmarkRun run;
  double base_correct = 0, base_style_free = 0;
  std::vector<CheckpointOutcome> checkpoints;
  std::optional<size_t> first_damaged, first_flagged;
  bool te_named = false, unet_named = false;
  bool right_part = false;  // the part that trained is named (gentle: nothing), no other
  bool in_time = false;     // flagged no later than damaged (true when never damaged)
  bool false_alarm = false; // a gentle run flagged
  nlohmann::json to_json() const;
};

// Trains, diagnoses and judges one run (its folder under options.out_dir).
BurnRunOutcome run_burn_benchmark(const BurnBenchmarkRun& run, const BurnBenchmarkOptions& options);

// `outcome` judged again by the truth read anew from its run's saved checkpoints (under
// options.out_dir), its diagnosis signs kept: for when the truth's reading changes.
BurnRunOutcome retruth(BurnRunOutcome outcome, const BurnBenchmarkOptions& options);

// An outcome written by to_json(), for `run` (what resuming a benchmark needs).
BurnRunOutcome burn_run_outcome_from_json(const nlohmann::json& json, const BurnBenchmarkRun& run);

// The outcomes again under other thresholds (the signs' values are kept): for choosing them.
BurnRunOutcome rejudge(BurnRunOutcome outcome, const DiagnosisThresholds& thresholds);

// A Markdown table, one row per run, and the totals.
std::string burn_benchmark_table(const std::vector<BurnRunOutcome>& outcomes);

}  // namespace kiln
