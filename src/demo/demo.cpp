#include "demo/demo.h"

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstdlib>

#include "demo/demo_report.h"
#include "demo/shipped_base.h"
#include "demo/world_drawing.h"
#include "io/checkpoint.h"
#include "lab/diagnosis.h"
#include "lab/run_report.h"
#include "pipeline/comparison_grid.h"
#include "surgery/lora.h"
#include "surgery/lora_merge.h"
#include "surgery/merge.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {

namespace fs = std::filesystem;

RunConfig style_run_config(const StyleRunSettings& s) {
  RunConfig config;
  config.model.checkpoint = s.base.string();
  config.model.config = s.base.string();
  config.data.folders = {{s.style.string(), 1}};
  config.data.resolution = s.size;
  config.data.buckets = false;
  config.data.random_flip = true;
  config.data.batch_size = s.batch_size;
  config.data.activation_phrase = std::string(kDemoActivationPhrase);
  config.text_encoder.train = s.te_lr > 0;
  config.text_encoder.lr = s.te_lr > 0 ? s.te_lr : 1e-6;
  config.unet.train = s.unet_lr > 0;
  config.unet.lr = s.unet_lr > 0 ? s.unet_lr : 1e-6;
  for (PartSection* part : {static_cast<PartSection*>(&config.text_encoder), &config.unet}) {
    part->warmup_steps = 5;
    part->weight_decay = 0.0;
  }
  config.training.seed = s.seed;
  config.training.epochs = s.epochs;
  config.validation.split = 0.15;
  config.validation.every_epochs = s.every;
  config.validation.stabilize_items = 4;
  config.checkpoints.every_epochs = s.every;
  config.checkpoints.dtype = "fp16";
  config.checkpoints.keep_last_states = 1;
  config.samples.width = config.samples.height = s.size;
  config.samples.steps = s.steps;
  config.samples.cfg = 5.0;
  config.samples.prompts = s.sample_prompts.string();
  config.diagnose.warn = !s.sample_prompts.empty();
  return config;
}

GenerationSettings demo_cell_settings(const DemoScale& scale) {
  GenerationSettings s;
  s.sampler = "dpmpp_2m_karras";
  s.steps = scale.steps;
  s.cfg = 5.0;
  s.width = scale.world.size;
  s.height = scale.world.size;
  return s;
}

namespace {

// Bumped whenever the base's recipe changes, so a stale cached base is never used.
constexpr const char* kBaseVersion = "demo-base-v3";
// Plain-world pictures written when the base is not trained here: the report's overview row.
constexpr int kPlainPicturesShown = 16;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class Demo {
 public:
  explicit Demo(const DemoOptions& options)
      : options_(options), scale_(options.quick ? quick_demo_scale() : full_demo_scale()) {}
  DemoResult run();

 private:
  void say(const std::string& line) {
    if (options_.console) *options_.console << line << "\n" << std::flush;
  }
  // The base when one is ready (--base, cached, shipped); nullopt when it must be trained. Throws,
  // naming where it looked, when the shipped one is missing and retraining was not asked for.
  std::optional<fs::path> ready_base();
  fs::path trained_base_path() const;
  fs::path train_base(const DemoWorld& world);
  DemoRun run_experiment(const DemoExperiment& experiment, const DemoWorld& world);
  std::vector<fs::path> merged_lora_checkpoints(const DemoRun& run, const std::vector<fs::path>& loras);
  GenerationSettings cell_settings() const;
  // Writes OUT/sample-prompts.txt: the grid's prompts, which every run draws at each checkpoint
  // (seed 1).
  fs::path write_sample_prompts() const;
  void grid(const std::vector<fs::path>& checkpoints, const std::vector<std::string>& labels,
            const std::string& title, const fs::path& out_dir, bool gif);
  void merges(DemoResult& result);

  DemoOptions options_;
  DemoScale scale_;
  fs::path base_;
  fs::path sample_prompts_;
};

GenerationSettings Demo::cell_settings() const { return demo_cell_settings(scale_); }

fs::path Demo::write_sample_prompts() const {
  const fs::path path = options_.out_dir / "sample-prompts.txt";
  std::string text;
  for (const auto& prompt : demo_prompts()) text += prompt + "\n";
  write_text_atomically(path, text);
  return path;
}

std::optional<fs::path> Demo::ready_base() {
  if (options_.base) {
    if (!fs::exists(*options_.base)) throw_file_error(*options_.base, "the demo base model does not exist");
    return *options_.base;
  }
  if (options_.retrain_base) return std::nullopt;
  if (fs::is_regular_file(trained_base_path() / "model_index.json")) {
    say("base model: " + trained_base_path().string() + " (cached; --retrain-base trains it again)");
    return trained_base_path();
  }
  if (options_.quick) return std::nullopt;  // the quick base is a different (barely trained) model
  if (const auto shipped = find_shipped_base(options_.shipped_base_candidates)) {
    say("base model: " + shipped->string() + " (shipped; --retrain-base trains it again)");
    return *shipped;
  }
  std::vector<std::string> looked;
  for (const auto& candidate : options_.shipped_base_candidates) looked.push_back(candidate.string());
  throw Error(fmt::format(
      "kiln demo: the demo base that ships with kiln (a folder demo-base/) is in none of: {}. Set KILN_DATA_DIR to "
      "the folder that holds demo-base/, give --base DIR, or train it anew with --retrain-base (about 85 minutes "
      "on 2 cores)",
      looked.empty() ? std::string("(no place to look)") : fmt::format("{}", fmt::join(looked, ", "))));
}

fs::path Demo::trained_base_path() const {
  const fs::path cache = options_.cache_dir ? *options_.cache_dir : default_demo_cache(options_.out_dir);
  return cache / (std::string(kBaseVersion) + (options_.quick ? "-quick" : ""));
}

fs::path Demo::train_base(const DemoWorld& world) {
  const auto start = std::chrono::steady_clock::now();
  train_demo_base(world, options_.out_dir / "base-training", trained_base_path(), scale_.base, options_.console);
  say(fmt::format("base model trained in {:.0f} s: {}", seconds_since(start), trained_base_path().string()));
  return trained_base_path();
}

void Demo::grid(const std::vector<fs::path>& checkpoints, const std::vector<std::string>& labels,
                const std::string& title, const fs::path& out_dir, bool gif) {
  GridRequest request;
  request.checkpoints = checkpoints;
  request.checkpoint_labels = labels;
  request.config = base_;
  request.prompts = demo_prompts();
  request.seeds = {scale_.seeds.front()};
  request.base = cell_settings();
  request.rows = GridAxis::Checkpoint;
  request.columns = GridAxis::Prompt;
  request.title = title;
  request.out_dir = out_dir;
  request.gif = gif;
  request.zoom = scale_.zoom;
  request.device = options_.device;
  make_comparison_grid(request);
}

std::vector<fs::path> Demo::merged_lora_checkpoints(const DemoRun& run, const std::vector<fs::path>& loras) {
  const Checkpoint base = read_checkpoint(base_);
  std::vector<fs::path> out;
  fs::create_directories(run.run_dir / "merged");
  for (const auto& lora_file : loras) {
    Checkpoint merged = base;
    merge_lora(merged, read_lora(lora_file, base), 1.0);
    const fs::path path = run.run_dir / "merged" / lora_file.filename();
    write_checkpoint(merged, path, CheckpointLayout::Ldm, torch::kHalf);
    out.push_back(path);
  }
  return out;
}

DemoRun Demo::run_experiment(const DemoExperiment& experiment, const DemoWorld& world) {
  const auto start = std::chrono::steady_clock::now();
  DemoRun run;
  run.experiment = experiment;
  run.run_dir = options_.out_dir / "runs" / experiment.name;
  say(fmt::format("\n== {}: {} ==", experiment.name, experiment.title));

  StyleRunSettings settings;
  settings.base = base_;
  settings.style = world.style;
  settings.size = world.size.size;
  settings.batch_size = scale_.batch_size;
  settings.te_lr = experiment.text_encoder_lr;
  settings.unet_lr = experiment.unet_lr;
  settings.epochs = experiment.long_run ? scale_.long_epochs : scale_.short_epochs;
  settings.every = experiment.long_run ? scale_.long_every : scale_.short_every;
  settings.steps = scale_.steps;
  settings.sample_prompts = sample_prompts_;
  RunConfig config = style_run_config(settings);
  config.lora.enabled = experiment.lora;
  config.lora.rank = 8;
  config.lora.alpha = 8;
  validate(config, experiment.name);

  fs::remove_all(run.run_dir);
  TrainOptions train_options;
  train_options.run_dir = run.run_dir;
  train_options.console = options_.console;
  train_options.device = options_.device;
  const auto trained = train(config, train_options);
  run.checkpoints = experiment.lora ? merged_lora_checkpoints(run, trained.checkpoints) : trained.checkpoints;
  for (const auto& path : run.checkpoints) {
    const auto stem = path.stem().string();  // e0012
    run.labels.push_back(stem.size() > 1 && stem[0] == 'e' ? "epoch " + std::to_string(std::stoi(stem.substr(1)))
                                                           : stem);
  }

  std::vector<fs::path> models{base_};
  std::vector<std::string> labels{"base"};
  models.insert(models.end(), run.checkpoints.begin(), run.checkpoints.end());
  labels.insert(labels.end(), run.labels.begin(), run.labels.end());
  say("grid and progression GIF");
  grid(models, labels, experiment.title, run.run_dir / "grid", true);

  say("diagnosis");
  DiagnosisRequest request;
  request.base = base_;
  request.checkpoints = run.checkpoints;
  request.labels = run.labels;
  request.config = base_;
  request.prompts = demo_diagnosis_prompts();
  request.activation_phrase = std::string(kDemoActivationPhrase);
  request.training_images = {world.style};
  request.seeds = scale_.seeds;
  request.settings = cell_settings();
  request.device = options_.device;
  const auto diagnosis = diagnose(request);
  write_diagnosis(diagnosis, run.run_dir / "diagnose");
  const auto json = diagnosis.to_json();
  for (const auto& verdict : json["verdicts"]) {
    run.verdicts.push_back(verdict.get<std::string>());
    say("  " + run.verdicts.back());
  }
  for (const auto& c : diagnosis.checkpoints) run.checkpoint_verdicts.push_back(c.verdict);
  run.final_verdict = diagnosis.checkpoints.back().verdict;
  run.summary = diagnosis.summary;
  if (diagnosis.recommended) run.recommended = diagnosis.checkpoints[*diagnosis.recommended].label;
  write_run_report(run.run_dir);
  run.seconds = seconds_since(start);
  say(fmt::format("{} done in {:.0f} s", experiment.name, run.seconds));
  return run;
}

void Demo::merges(DemoResult& result) {
  say("\n== merges ==");
  auto last_of = [&](const std::string& name) -> fs::path {
    for (const auto& run : result.runs)
      if (run.experiment.name == name && !run.checkpoints.empty()) return run.checkpoints.back();
    throw Error("demo: no checkpoint of run " + name + " to merge");
  };
  const fs::path dir = options_.out_dir / "merges";
  fs::create_directories(dir);
  const Checkpoint base = read_checkpoint(base_);
  const Checkpoint burnt = read_checkpoint(last_of("unet-high"), base_);
  const Checkpoint style = read_checkpoint(last_of("style"), base_);
  const Checkpoint other = read_checkpoint(last_of("te-normal"), base_);
  // Tempering a burnt UNet by mixing the base back in: (1 − 0.5)·burnt + 0.5·base.
  const fs::path tempered = dir / "unet-high-tempered.safetensors";
  write_checkpoint(weighted_sum(burnt, base, 0.5), tempered, CheckpointLayout::Ldm, torch::kHalf);
  // Transplanting the style fine-tune onto another fine-tune of the same base: A + (B − C)·1.
  const fs::path transplanted = dir / "style-added-to-te-normal.safetensors";
  write_checkpoint(add_difference(other, style, base, 1.0), transplanted, CheckpointLayout::Ldm, torch::kHalf);
  result.merges = {tempered, transplanted};
  grid({base_, last_of("unet-high"), tempered, last_of("te-normal"), last_of("style"), transplanted},
       {"base", "unet-high", "0.5 unet-high + 0.5 base", "te-normal", "style", "te-normal + (style - base)"},
       "Merges: weighted sum and add-difference", dir / "grid", false);
}

DemoResult Demo::run() {
  const auto start = std::chrono::steady_clock::now();
  fs::create_directories(options_.out_dir);
  say(fmt::format("kiln demo{}: writing into {}", options_.quick ? " --quick" : "", options_.out_dir.string()));
  const auto ready = ready_base();
  // Only training the base needs the whole plain world and the looks; the report shows a few.
  DemoWorldSize world_size = scale_.world;
  if (ready) world_size.plain_count = kPlainPicturesShown, world_size.look_count = 0;
  const DemoWorld world = write_demo_world(options_.out_dir / "world", world_size);
  say(fmt::format("world: {} plain pictures, {} in the style set (activation phrase \"{}\")",
                  world_size.plain_count, world_size.style_count, kDemoActivationPhrase));
  DemoResult result;
  base_ = ready ? *ready : train_base(world);
  result.base = base_;
  say("how well the base draws its world (every world prompt, seed 101)");
  WorldDrawingRequest drawing;
  drawing.model = base_;
  drawing.seeds = {101};
  drawing.settings = cell_settings();
  drawing.device = options_.device;
  drawing.sheet = result.base_sheet = options_.out_dir / "base-world.png";
  result.base_drawing = score_world_drawing(drawing);
  say(fmt::format("  as asked (colour, shape, background, clean) in {:.0f}% of {} pictures",
                  100 * result.base_drawing.correct, result.base_drawing.cells));
  if (options_.base_only) {
    result.seconds = seconds_since(start);
    return result;
  }
  sample_prompts_ = write_sample_prompts();
  for (const auto& experiment : demo_experiments()) result.runs.push_back(run_experiment(experiment, world));
  merges(result);
  result.seconds = seconds_since(start);
  result.report = write_demo_report(result, world, options_.out_dir);
  return result;
}

}  // namespace

DemoScale full_demo_scale() { return {}; }

DemoScale quick_demo_scale() {
  DemoScale s;
  s.world = {48, 8, 8, 64};
  s.base.vae_steps = 20;
  s.base.epochs = 1;
  s.short_epochs = s.long_epochs = 2;
  s.short_every = s.long_every = 1;
  s.seeds = {1, 2};
  s.steps = 3;
  s.zoom = 1;
  return s;
}

std::vector<DemoExperiment> demo_experiments() {
  return {
      {"style", "Style fine-tune, separate rates",
       "The baseline: text encoder at 1e-5, UNet at 5e-5. Does the style arrive with the phrase and stay away without it?",
       1e-5, 5e-5, false, false},
      {"coupled", "Style fine-tune, one rate for both parts",
       "The text encoder at the UNet's rate (5e-5), as trainers with one learning rate do: compare with 'style'.", 5e-5,
       5e-5, false, false},
      {"unet-normal", "UNet only, normal rate", "Text encoder frozen, UNet at 1e-4 for twice as long.", 0, 1e-4, true,
       false},
      {"unet-high", "UNet only, high rate",
       "Text encoder frozen, UNet at 1e-3: the burn (the style's stripes in prompts that never asked for them, "
       "colours washed out, shapes melting).",
       0, 1e-3, true, false},
      {"te-normal", "Text encoder only, normal rate", "UNet frozen, text encoder at 5e-5 for twice as long.", 5e-5, 0,
       true, false},
      {"te-high", "Text encoder only, high rate",
       "UNet frozen, text encoder at 1e-3: the prompt drifts (wrong colours and shapes) with milder colour changes.",
       1e-3, 0, true, false},
      {"lora", "LoRA, rank 8", "A LoRA on both parts (5e-4) instead of the full weights, merged into the base to compare.",
       5e-4, 5e-4, false, true},
  };
}

fs::path default_demo_cache(const fs::path& out_dir) {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "kiln";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".cache" / "kiln";
  return out_dir / "cache";
}

DemoResult run_demo(const DemoOptions& options) { return Demo(options).run(); }

}  // namespace kiln
