// `kiln demo`: the experiment a fine-tuner runs, end to end, on a tiny model in a synthetic world:
// a style fine-tune, the UNet and the text encoder over-trained on their own at a normal and a high
// rate, one rate for both parts against separate ones, a LoRA, two merges; every run gets grids,
// a progression GIF, a diagnosis and its report, and one page ties them together.
#pragma once
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <torch/types.h>

#include "demo/demo_base.h"
#include "demo/demo_world.h"
#include "lab/prompt_adherence.h"
#include "pipeline/generation_settings.h"
#include "train/run_config.h"

namespace kiln {

// What one experiment trains. Rates of 0 leave a part frozen.
struct DemoExperiment {
  std::string name;      // run folder name
  std::string title;     // what it is
  std::string question;  // what it shows
  double text_encoder_lr = 0, unet_lr = 0;
  bool long_run = false;  // over-training runs go on longer and keep more checkpoints
  bool lora = false;
};

// Sizes: the full demo (a laptop CPU, minutes) or --quick (CI: every artefact, seconds of training).
struct DemoScale {
  DemoWorldSize world;
  DemoBaseOptions base;
  int64_t short_epochs = 24, short_every = 6;
  int64_t long_epochs = 48, long_every = 12;
  int64_t batch_size = 4;
  std::vector<uint64_t> seeds{1, 2, 3, 4};  // diagnosis cells per prompt (the grids use the first)
  int64_t steps = 16;                    // sampling steps of every grid and diagnosis cell
  int zoom = 2;                          // grid cells drawn this many times larger
};
DemoScale full_demo_scale();
DemoScale quick_demo_scale();

// A fine-tune of the demo base on a style set, as every demo experiment and the burn benchmark
// train it: AdamW, 5 warm-up steps, 15 % held out, fp16 checkpoints every `every` epochs.
struct StyleRunSettings {
  std::filesystem::path base, style;
  int64_t size = 64, batch_size = 4;
  double te_lr = 0, unet_lr = 0;  // 0: frozen
  int64_t epochs = 24, every = 6;
  int64_t steps = 16;  // of the checkpoint samples
  uint64_t seed = 555;
  // A prompts file drawn at every checkpoint (and by the base before the first step, for the burn
  // watch); empty: no samples and no burn watch.
  std::filesystem::path sample_prompts;
};
RunConfig style_run_config(const StyleRunSettings& settings);

// How every grid and diagnosis cell of the demo is drawn (DPM++ 2M Karras, cfg 5, the world's size).
GenerationSettings demo_cell_settings(const DemoScale& scale);

std::vector<DemoExperiment> demo_experiments();

struct DemoOptions {
  std::filesystem::path out_dir = "kiln-demo";
  // A trained demo base (diffusers folder) to use instead of the cached or shipped one.
  std::optional<std::filesystem::path> base;
  // Where the base that ships with kiln may be (shipped_base_candidates), searched in order when no
  // retrained one is cached. Not found, the demo stops and says where it looked: it never spends
  // an hour and a half retraining unasked.
  std::vector<std::filesystem::path> shipped_base_candidates;
  // Where the base model kiln trains on first use is kept (default: $XDG_CACHE_HOME/kiln, else
  // ~/.cache/kiln, else OUT/cache).
  std::optional<std::filesystem::path> cache_dir;
  bool retrain_base = false;
  bool base_only = false;  // stop once the base model is ready (to train and ship a new one)
  bool quick = false;
  // Where the experiments train and their grids and diagnoses are drawn. The base model, when kiln
  // trains it, trains on the CPU: it is tiny and trained once.
  torch::Device device = torch::kCPU;
  std::ostream* console = nullptr;
};

struct DemoRun {
  DemoExperiment experiment;
  std::filesystem::path run_dir;
  std::vector<std::filesystem::path> checkpoints;  // full checkpoints (a LoRA run's merged into the base)
  std::vector<std::string> labels;
  std::vector<std::string> verdicts;  // every checkpoint's, then the swap test's
  std::vector<std::string> checkpoint_verdicts;  // one per checkpoint, in order
  std::string final_verdict;                     // the last checkpoint's
  std::vector<std::string> summary;  // one line per part, then the recommended checkpoint
  std::string recommended;           // its label; empty when even the first checkpoint burns
  double seconds = 0;
};

struct DemoResult {
  std::filesystem::path base;
  // How well the base draws its world: every world prompt at seed 101 (demo/world_drawing.h), and
  // the contact sheet of those pictures (OUT/base-world.png).
  PromptAdherence base_drawing;
  std::filesystem::path base_sheet;
  std::vector<DemoRun> runs;
  std::vector<std::filesystem::path> merges;  // weighted sum, add-difference
  std::filesystem::path report;               // OUT/report.html; empty with base_only
  double seconds = 0;
};

DemoResult run_demo(const DemoOptions& options);

// The cache folder DemoOptions::cache_dir defaults to.
std::filesystem::path default_demo_cache(const std::filesystem::path& out_dir);

}  // namespace kiln
