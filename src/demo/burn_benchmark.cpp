#include "demo/burn_benchmark.h"

#include <fmt/format.h>

#include <algorithm>

#include "data/synthetic.h"
#include "demo/demo.h"
#include "demo/world_drawing.h"
#include "lab/diagnosis.h"
#include "train/trainer.h"
#include "util/error.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

GenerationSettings cell_settings(const BurnBenchmarkOptions& o) {
  DemoScale scale;
  scale.world = o.world;
  scale.steps = o.steps;
  return demo_cell_settings(scale);
}

PromptAdherence truth_of(const fs::path& model, const BurnBenchmarkOptions& o, const StyleLook& look) {
  WorldDrawingRequest request;
  request.model = model;
  request.config = o.base;
  request.seeds = o.truth_seeds;
  request.prompts = o.truth_prompts;
  request.settings = cell_settings(o);
  request.style_rim = look.rim;
  return score_world_drawing(request);
}

// Damaged: the share of pictures drawn as asked, or of style-free ones, fell by the margin.
bool is_damaged(const PromptAdherence& truth, const BurnRunOutcome& run, double margin) {
  return run.base_correct - truth.correct >= margin || run.base_style_free - truth.style_free >= margin;
}

void say(const BurnBenchmarkOptions& o, const std::string& line) {
  if (o.console) *o.console << line << "\n" << std::flush;
}

}  // namespace

const char* burn_run_kind_name(BurnRunKind kind) {
  switch (kind) {
    case BurnRunKind::TextEncoder: return "te";
    case BurnRunKind::Unet: return "unet";
    case BurnRunKind::Both: return "both";
    case BurnRunKind::Gentle: return "gentle";
  }
  return "?";
}

std::vector<BurnBenchmarkRun> burn_benchmark_runs() {
  std::vector<BurnBenchmarkRun> runs;
  const auto looks = synthetic_style_looks();
  for (size_t look = 0; look < looks.size(); ++look) {
    for (const uint64_t seed : {11u, 12u}) {
      // Two rates per kind, one per seed: over-training rates as people use them too high, and the
      // gentle rates of a style fine-tune that should stay healthy.
      const bool first = seed == 11;
      const auto add = [&](BurnRunKind kind, double te, double unet) {
        runs.push_back({fmt::format("{}-{}-s{}", looks[look].name, burn_run_kind_name(kind), seed), look, seed, kind,
                        te, unet});
      };
      add(BurnRunKind::TextEncoder, first ? 1e-3 : 5e-4, 0);
      add(BurnRunKind::Unet, 0, first ? 1e-3 : 5e-4);
      add(BurnRunKind::Both, first ? 5e-4 : 3e-4, first ? 5e-4 : 3e-4);
      add(BurnRunKind::Gentle, first ? 5e-6 : 1e-5, first ? 2e-5 : 5e-5);
    }
  }
  return runs;
}

BurnRunOutcome rejudge(BurnRunOutcome o, const DiagnosisThresholds& t) {
  o.first_flagged.reset();
  o.te_named = o.unet_named = false;
  for (size_t i = 0; i < o.checkpoints.size(); ++i) {
    auto& c = o.checkpoints[i];
    c.signs.clear();
    for (const auto& sign : c.all_signs)
      if (sign.value > sign_threshold(sign.name, t)) {
        c.signs.push_back(sign);
        if (c.signs.back().text.empty()) c.signs.back().text = fmt::format("{} {:.3f}", sign.name, sign.value);
      }
    if (!c.signs.empty() && !o.first_flagged) o.first_flagged = i;
    for (const auto& sign : c.signs) (sign.part == Part::TextEncoder ? o.te_named : o.unet_named) = true;
  }
  const bool te_trains = o.run.te_lr > 0, unet_trains = o.run.unet_lr > 0;
  switch (o.run.kind) {
    case BurnRunKind::Gentle: o.right_part = o.first_damaged ? (o.te_named || o.unet_named) : !o.te_named && !o.unet_named; break;
    case BurnRunKind::Both: o.right_part = o.te_named || o.unet_named; break;
    default: o.right_part = (o.te_named == te_trains) && (o.unet_named == unet_trains);
  }
  // A run whose damage never shows can be flagged or not; one that is damaged must be flagged by then.
  o.in_time = !o.first_damaged || (o.first_flagged && *o.first_flagged <= *o.first_damaged);
  // A gentle run that the truth itself calls damaged later must be flagged by then, not before.
  o.false_alarm = o.run.kind == BurnRunKind::Gentle && o.first_flagged &&
                  (!o.first_damaged || *o.first_flagged < *o.first_damaged);
  return o;
}

BurnRunOutcome run_burn_benchmark(const BurnBenchmarkRun& run, const BurnBenchmarkOptions& o) {
  const StyleLook& look = synthetic_style_looks()[run.look];
  const fs::path dir = o.out_dir / run.name;
  say(o, fmt::format("== {} ({} look, te {:g}, unet {:g}) ==", run.name, look.name, run.te_lr, run.unet_lr));
  const fs::path style = dir / "style";
  fs::remove_all(dir);
  write_style_dataset(style, o.world.style_count, o.world.size, 1000 + run.seed, kDemoActivationPhrase, look,
                      o.world.shapes);
  StyleRunSettings settings;
  settings.base = o.base;
  settings.style = style;
  settings.size = o.world.size;
  settings.batch_size = o.batch_size;
  settings.te_lr = run.te_lr;
  settings.unet_lr = run.unet_lr;
  settings.epochs = o.epochs;
  settings.every = o.every;
  settings.steps = o.steps;
  settings.seed = run.seed;
  RunConfig config = style_run_config(settings);
  config.logging.tensorboard = false;
  config.validation.stabilize_items = 0;
  validate(config, run.name);
  TrainOptions train_options;
  train_options.run_dir = dir / "run";
  train_options.console = o.console;
  const auto trained = train(config, train_options);

  DiagnosisRequest request;
  request.base = o.base;
  request.config = o.base;
  request.checkpoints = trained.checkpoints;
  request.prompts = demo_diagnosis_prompts();
  request.activation_phrase = std::string(kDemoActivationPhrase);
  request.training_images = {style};
  request.seeds = o.diagnosis_seeds;
  request.settings = cell_settings(o);
  request.thresholds = o.thresholds;
  // Every checkpoint's swap test where both parts train, so any threshold can be judged later; a
  // one-part run has nothing to attribute.
  request.swap_test = run.te_lr > 0 && run.unet_lr > 0 ? SwapTestPolicy::Every : SwapTestPolicy::Off;
  const auto diagnosis = diagnose(request);
  write_diagnosis(diagnosis, dir / "run" / "diagnose");

  BurnRunOutcome out;
  out.run = run;
  const auto base_truth = truth_of(o.base, o, look);
  out.base_correct = base_truth.correct;
  out.base_style_free = base_truth.style_free;
  for (const auto& c : diagnosis.checkpoints) {
    CheckpointOutcome outcome;
    outcome.label = c.label;
    const auto truth = truth_of(c.path, o, look);
    outcome.correct = truth.correct;
    outcome.style_free = truth.style_free;
    outcome.damaged = is_damaged(truth, out, o.damage_margin);
    outcome.all_signs = attributed_signs(c, diagnosis.base, every_sign_thresholds());
    if (outcome.damaged && !out.first_damaged) out.first_damaged = out.checkpoints.size();
    say(o, fmt::format("  {}: correct {:.0f}% (base {:.0f}%), style-free {:.0f}% (base {:.0f}%){}; {}", c.label,
                       100 * truth.correct, 100 * out.base_correct, 100 * truth.style_free, 100 * out.base_style_free,
                       outcome.damaged ? " DAMAGED" : "", c.verdict));
    out.checkpoints.push_back(std::move(outcome));
  }
  return rejudge(std::move(out), o.thresholds);
}

BurnRunOutcome retruth(BurnRunOutcome o, const BurnBenchmarkOptions& options) {
  const StyleLook& look = synthetic_style_looks()[o.run.look];
  const auto base_truth = truth_of(options.base, options, look);
  o.base_correct = base_truth.correct;
  o.base_style_free = base_truth.style_free;
  o.first_damaged.reset();
  for (size_t i = 0; i < o.checkpoints.size(); ++i) {
    auto& c = o.checkpoints[i];
    const auto truth =
        truth_of(options.out_dir / o.run.name / "run" / "checkpoints" / (c.label + ".safetensors"), options, look);
    c.correct = truth.correct;
    c.style_free = truth.style_free;
    c.damaged = is_damaged(truth, o, options.damage_margin);
    if (c.damaged && !o.first_damaged) o.first_damaged = i;
  }
  say(options, fmt::format("  {}: truth read again", o.run.name));
  return rejudge(std::move(o), options.thresholds);
}

nlohmann::json BurnRunOutcome::to_json() const {
  nlohmann::json checkpoints_json = nlohmann::json::array();
  for (const auto& c : checkpoints) {
    nlohmann::json signs_json = nlohmann::json::array();
    for (const auto& s : c.all_signs)
      signs_json.push_back({{"sign", s.name}, {"value", s.value}, {"part", part_name(s.part)}});
    nlohmann::json crossed = nlohmann::json::array();
    for (const auto& s : c.signs) crossed.push_back(s.text + " (" + part_name(s.part) + ")");
    checkpoints_json.push_back({{"label", c.label},
                                {"correct", c.correct},
                                {"style_free", c.style_free},
                                {"damaged", c.damaged},
                                {"signs", signs_json},
                                {"crossed", crossed}});
  }
  const auto index = [](const std::optional<size_t>& i) { return i ? nlohmann::json(*i) : nlohmann::json(nullptr); };
  return {{"run", run.name},
          {"look", std::string(synthetic_style_looks()[run.look].name)},
          {"kind", burn_run_kind_name(run.kind)},
          {"seed", run.seed},
          {"te_lr", run.te_lr},
          {"unet_lr", run.unet_lr},
          {"base_correct", base_correct},
          {"base_style_free", base_style_free},
          {"checkpoints", checkpoints_json},
          {"first_damaged", index(first_damaged)},
          {"first_flagged", index(first_flagged)},
          {"te_named", te_named},
          {"unet_named", unet_named},
          {"right_part", right_part},
          {"in_time", in_time},
          {"false_alarm", false_alarm}};
}

BurnRunOutcome burn_run_outcome_from_json(const nlohmann::json& j, const BurnBenchmarkRun& run) {
  BurnRunOutcome o;
  o.run = run;
  o.base_correct = j.at("base_correct");
  o.base_style_free = j.at("base_style_free");
  for (const auto& c : j.at("checkpoints")) {
    CheckpointOutcome outcome;
    outcome.label = c.at("label");
    outcome.correct = c.at("correct");
    outcome.style_free = c.at("style_free");
    outcome.damaged = c.at("damaged");
    for (const auto& s : c.at("signs"))
      outcome.all_signs.push_back({s.at("sign"), s.at("value"), 0.0, "",
                                   s.at("part") == "UNet" ? Part::Unet : Part::TextEncoder});
    if (outcome.damaged && !o.first_damaged) o.first_damaged = o.checkpoints.size();
    o.checkpoints.push_back(std::move(outcome));
  }
  return rejudge(std::move(o), DiagnosisThresholds{});
}

std::string burn_benchmark_table(const std::vector<BurnRunOutcome>& outcomes) {
  std::string out =
      "| run | kind | te lr | unet lr | correct / style-free per checkpoint (base first) | first damaged | first "
      "flagged | parts named | right part | in time | false alarm |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
  int right = 0, in_time = 0, alarms = 0;
  const auto at = [](const BurnRunOutcome& o, const std::optional<size_t>& i) {
    return i ? o.checkpoints[*i].label : std::string("—");
  };
  for (const auto& o : outcomes) {
    std::string shares = fmt::format("{:.0f}/{:.0f}", 100 * o.base_correct, 100 * o.base_style_free);
    for (const auto& c : o.checkpoints) shares += fmt::format(" · {:.0f}/{:.0f}", 100 * c.correct, 100 * c.style_free);
    std::string parts = o.te_named && o.unet_named ? "both" : o.te_named ? "text encoder" : o.unet_named ? "UNet" : "none";
    out += fmt::format("| {} | {} | {:g} | {:g} | {} | {} | {} | {} | {} | {} | {} |\n", o.run.name,
                       burn_run_kind_name(o.run.kind), o.run.te_lr, o.run.unet_lr, shares, at(o, o.first_damaged),
                       at(o, o.first_flagged), parts, o.right_part ? "yes" : "**no**", o.in_time ? "yes" : "**late**",
                       o.false_alarm ? "**yes**" : "no");
    right += o.right_part;
    in_time += o.in_time;
    alarms += o.false_alarm;
  }
  out += fmt::format("\n{} runs: right part {}/{}, in time {}/{}, false alarms {}.\n", outcomes.size(), right,
                     outcomes.size(), in_time, outcomes.size(), alarms);
  return out;
}

}  // namespace kiln
