#include "lab/diagnosis.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "io/checkpoint.h"
#include "lab/svg_plot.h"
#include "models/model_loading.h"
#include "pipeline/loaded_model.h"
#include "pipeline/txt2img.h"
#include "train/run_config.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxBatch = 8;

ModelImageStats image_statistics(const StableDiffusionModels& models, const CLIPTokenizer& tokenizer,
                                 const DiagnosisRequest& r) {
  to_device(models, r.device);
  Txt2Img txt2img(models, tokenizer);
  ModelImageStats out;
  int cells = 0;
  std::vector<std::pair<WorldPrompt, Image>> world_cells;  // for prompt adherence
  for (const auto& prompt : r.prompts) {
    const auto world = parse_world_prompt(prompt);
    std::vector<Image> images;
    // Runs of consecutive seeds go through the UNet as one batch (image b of a batch uses seed + b,
    // the same noise as its own call): several times faster for small models on a CPU.
    for (size_t i = 0; i < r.seeds.size();) {
      size_t run = 1;
      while (i + run < r.seeds.size() && run < kMaxBatch && r.seeds[i + run] == r.seeds[i] + run) ++run;
      auto s = r.settings;
      s.prompt = prompt;
      s.seed = r.seeds[i];
      s.batch = static_cast<int64_t>(run);
      for (auto& image : txt2img.generate(s)) images.push_back(std::move(image));
      i += run;
    }
    for (const auto& image : images) {
      if (world) world_cells.emplace_back(*world, image);
      const auto stats = image_stats(image);
      out.mean.saturation += stats.saturation;
      out.mean.contrast += stats.contrast;
      out.mean.colourfulness += stats.colourfulness;
      out.mean.high_frequency += stats.high_frequency;
      ++cells;
    }
    if (images.size() >= 2) out.diversity += seed_diversity(images) / static_cast<double>(r.prompts.size());
  }
  const double n = std::max(1, cells);
  out.mean.saturation /= n;
  out.mean.contrast /= n;
  out.mean.colourfulness /= n;
  out.mean.high_frequency /= n;
  if (!world_cells.empty()) out.adherence = prompt_adherence(world_cells);
  return out;
}

double change(double now, double base) { return base != 0 ? (now - base) / std::abs(base) : 0.0; }

// Whether the fraction of cells with the asked colour and shape fell by more than the threshold.
// A drifting text encoder changes colours before shapes, so the colour fraction counts on its own too.
bool adherence_dropped(const ModelImageStats& s, const ModelImageStats& base, const DiagnosisThresholds& t) {
  return s.adherence && base.adherence &&
         std::max(base.adherence->both - s.adherence->both, base.adherence->colour - s.adherence->colour) >
             t.adherence_drop;
}

// "prompt adherence 90% -> 50%" (colour and shape right), or "... (colour)" when the colour fraction
// fell further.
std::string adherence_sign(const PromptAdherence& now, const PromptAdherence& base) {
  if (base.colour - now.colour > base.both - now.both)
    return fmt::format("prompt adherence (colour) {:.0f}% -> {:.0f}%", 100 * base.colour, 100 * now.colour);
  return fmt::format("prompt adherence {:.0f}% -> {:.0f}%", 100 * base.both, 100 * now.both);
}

// The image burn signs of `s` against the base, as "saturation +38%" phrases.
std::vector<std::string> burn_signs(const ModelImageStats& s, const ModelImageStats& base,
                                    const DiagnosisThresholds& t) {
  std::vector<std::string> signs;
  const double saturation = change(s.mean.saturation, base.mean.saturation);
  const double contrast = change(s.mean.contrast, base.mean.contrast);
  const double high = change(s.mean.high_frequency, base.mean.high_frequency);
  const double diversity = change(s.diversity, base.diversity);
  if (saturation > t.saturation_increase)
    signs.push_back(fmt::format("saturation {:+.0f}%", 100 * saturation));
  if (contrast > t.contrast_increase) signs.push_back(fmt::format("contrast {:+.0f}%", 100 * contrast));
  if (high > t.high_frequency_increase)
    signs.push_back(fmt::format("high-frequency texture {:+.0f}%", 100 * high));
  if (-diversity > t.diversity_drop) signs.push_back(fmt::format("seed diversity {:+.0f}%", 100 * diversity));
  return signs;
}

// One number for "how burnt": the sum of the relative increases of saturation, contrast and
// high-frequency energy and of the relative loss of diversity (only the burn-ward directions).
double burn_score(const ModelImageStats& s, const ModelImageStats& base) {
  return std::max(0.0, change(s.mean.saturation, base.mean.saturation)) +
         std::max(0.0, change(s.mean.contrast, base.mean.contrast)) +
         std::max(0.0, change(s.mean.high_frequency, base.mean.high_frequency)) +
         std::max(0.0, -change(s.diversity, base.diversity));
}


double component_drift(const std::vector<DriftGroup>& drift, const std::string& name) {
  for (const auto& g : drift)
    if (g.name == name) return g.relative_drift;
  return 0.0;
}

nlohmann::json stats_json(const ModelImageStats& s) {
  nlohmann::json out = {{"saturation", s.mean.saturation},
                        {"contrast", s.mean.contrast},
                        {"colourfulness", s.mean.colourfulness},
                        {"high_frequency", s.mean.high_frequency},
                        {"seed_diversity", s.diversity}};
  if (s.adherence)
    out["prompt_adherence"] = {{"colour", s.adherence->colour},
                               {"shape", s.adherence->shape},
                               {"both", s.adherence->both},
                               {"cells", s.adherence->cells}};
  return out;
}

// Drift per block (text-encoder layers, UNet blocks, VAE): blocks along x, one line per checkpoint
// (at most 8, evenly spaced, always the last), so a single checkpoint is a profile too.
std::string drift_blocks_svg(const Diagnosis& d) {
  std::vector<std::string> blocks;
  for (const auto& c : d.checkpoints)
    for (const auto& g : c.drift)
      if (g.name != "te" && g.name != "unet" &&
          std::find(blocks.begin(), blocks.end(), g.name) == blocks.end())
        blocks.push_back(g.name);
  constexpr size_t kMaxLines = 8;
  const size_t n = d.checkpoints.size(), lines = std::min(n, kMaxLines);
  std::vector<Series> series;
  for (size_t k = 0; k < lines; ++k) {
    const size_t i = lines == 1 ? n - 1 : k * (n - 1) / (lines - 1);
    Series s;
    s.label = d.checkpoints[i].label;
    for (size_t b = 0; b < blocks.size(); ++b) {
      s.x.push_back(static_cast<double>(b));
      s.y.push_back(std::nan(""));
      for (const auto& g : d.checkpoints[i].drift)
        if (g.name == blocks[b]) s.y.back() = g.relative_drift;
    }
    series.push_back(std::move(s));
  }
  PlotOptions options{"Weight drift per block", "block", "relative drift ‖W − W₀‖ / ‖W₀‖"};
  options.height = 440;
  options.x_tick_labels = blocks;
  return line_plot_svg(series, options);
}

}  // namespace

std::string checkpoint_verdict(const CheckpointDiagnosis& c, const ModelImageStats& base,
                               const DiagnosisThresholds& t) {
  const double te_drift = component_drift(c.drift, "te"), unet_drift = component_drift(c.drift, "unet");
  const bool te_trained = te_drift > 0, unet_trained = unet_drift > 0;
  std::vector<std::string> unet_signs, te_signs;
  // Colour, contrast, texture and variety are the UNet's burn; the text encoder alone shifts them
  // only mildly, so they are its signs only when the UNet did not train.
  for (auto& sign : burn_signs(c.images, base, t)) (unet_trained || !te_trained ? unet_signs : te_signs).push_back(sign);
  // Drifting from the prompt is the text encoder's, unless it did not train.
  if (adherence_dropped(c.images, base, t))
    (te_trained || !unet_trained ? te_signs : unet_signs)
        .push_back(adherence_sign(*c.images.adherence, *base.adherence));
  const auto part = [](const char* name, bool trained, const std::vector<std::string>& signs) {
    if (!signs.empty()) return fmt::format("{} over-trained: {}", name, fmt::join(signs, ", "));
    return fmt::format("{} {}", name, trained ? "within range" : "unchanged");
  };
  return fmt::format("{}: {}; {} (drift: text encoder {:.4f}, UNet {:.4f})", c.label,
                     part("UNet", unet_trained, unet_signs), part("text encoder", te_trained, te_signs), te_drift,
                     unet_drift);
}

Diagnosis diagnose(const DiagnosisRequest& r, const DiagnosisProgress& progress) {
  auto say = [&](const std::string& what) {
    if (progress) progress(what);
  };
  if (r.checkpoints.empty()) throw Error("nothing to diagnose: no checkpoints");
  if (!r.labels.empty() && r.labels.size() != r.checkpoints.size())
    throw Error("one label per checkpoint, please");
  const Checkpoint base = read_checkpoint(r.base, r.config);
  auto base_model = load_model(r.base, r.config, false);
  Diagnosis d;
  d.thresholds = r.thresholds;
  say("base: " + r.base.string());
  d.base = image_statistics(base_model.models, base_model.tokenizer, r);
  for (size_t i = 0; i < r.checkpoints.size(); ++i) {
    const auto& path = r.checkpoints[i];
    say("checkpoint: " + path.string());
    CheckpointDiagnosis c;
    c.label = r.labels.empty() ? path.stem().string() : r.labels[i];
    c.path = path;
    const Checkpoint trained = read_checkpoint(path, r.config);
    c.drift = weight_drift(trained, base);
    auto model = load_model(path, r.config, false);
    c.images = image_statistics(model.models, model.tokenizer, r);
    c.verdict = checkpoint_verdict(c, d.base, r.thresholds);
    d.checkpoints.push_back(std::move(c));
  }
  if (r.swap_test) {
    // The last checkpoint's parts, one at a time, inside the base model.
    const Checkpoint trained = read_checkpoint(r.checkpoints.back(), r.config);
    say("swap test: trained UNet with the base text encoder, and the reverse");
    StableDiffusionModels unet_only = build_models(base), te_only = build_models(base);
    load_state_dict(*unet_only.unet, trained.unet, r.checkpoints.back().string());
    load_state_dict(*te_only.text_encoder, trained.text_encoder, r.checkpoints.back().string());
    d.trained_unet_base_te = image_statistics(unet_only, base_model.tokenizer, r);
    d.trained_te_base_unet = image_statistics(te_only, base_model.tokenizer, r);
    const double total = burn_score(d.checkpoints.back().images, d.base);
    const double by_unet = burn_score(*d.trained_unet_base_te, d.base);
    const double by_te = burn_score(*d.trained_te_base_unet, d.base);
    if (total < 1e-9 || burn_signs(d.checkpoints.back().images, d.base, r.thresholds).empty())
      d.attribution = "swap test: no burn sign to attribute at the last checkpoint";
    else
      d.attribution = fmt::format(
          "{} (swap test at {}: the trained UNet alone reproduces {:.0f}% of the burn score, the trained "
          "text "
          "encoder alone {:.0f}%)",
          by_unet >= by_te ? "the UNet carries the change" : "the text encoder carries the change",
          d.checkpoints.back().label, 100 * by_unet / total, 100 * by_te / total);
    // The part whose half-swapped model keeps less of the base's adherence causes the drop.
    if (adherence_dropped(d.checkpoints.back().images, d.base, r.thresholds) &&
        d.trained_te_base_unet->adherence && d.trained_unet_base_te->adherence) {
      const double te_only_both = d.trained_te_base_unet->adherence->both;
      const double unet_only_both = d.trained_unet_base_te->adherence->both;
      d.adherence_attribution = fmt::format(
          "prompt adherence: {} (swap test at {}: colour and shape right in {:.0f}% of cells for the base, "
          "{:.0f}% trained, {:.0f}% with the trained text encoder + base UNet, {:.0f}% with the base text "
          "encoder + trained UNet)",
          te_only_both <= unet_only_both ? "the text encoder causes the drop" : "the UNet causes the drop",
          d.checkpoints.back().label, 100 * d.base.adherence->both,
          100 * d.checkpoints.back().images.adherence->both, 100 * te_only_both, 100 * unet_only_both);
    }
  }
  return d;
}

nlohmann::json Diagnosis::to_json() const {
  nlohmann::json out;
  out["base"] = stats_json(base);
  out["thresholds"] = {{"saturation_increase", thresholds.saturation_increase},
                       {"contrast_increase", thresholds.contrast_increase},
                       {"high_frequency_increase", thresholds.high_frequency_increase},
                       {"diversity_drop", thresholds.diversity_drop},
                       {"adherence_drop", thresholds.adherence_drop}};
  out["checkpoints"] = nlohmann::json::array();
  out["verdicts"] = nlohmann::json::array();
  for (const auto& c : checkpoints) {
    nlohmann::json drift = nlohmann::json::array();
    for (const auto& g : c.drift)
      drift.push_back(
          {{"group", g.name}, {"relative_drift", g.relative_drift}, {"parameters", g.parameters}});
    out["checkpoints"].push_back({{"label", c.label},
                                  {"path", c.path.string()},
                                  {"images", stats_json(c.images)},
                                  {"drift", drift},
                                  {"verdict", c.verdict}});
    out["verdicts"].push_back(c.verdict);
  }
  if (trained_unet_base_te) {
    out["swap_test"] = {{"trained_unet_base_text_encoder", stats_json(*trained_unet_base_te)},
                        {"trained_text_encoder_base_unet", stats_json(*trained_te_base_unet)},
                        {"attribution", attribution}};
    out["verdicts"].push_back(attribution);
    if (!adherence_attribution.empty()) {
      out["swap_test"]["adherence_attribution"] = adherence_attribution;
      out["verdicts"].push_back(adherence_attribution);
    }
  }
  return out;
}

DiagnosisRequest diagnosis_request_for_run(const fs::path& run_dir) {
  const auto config = read_run_config(run_dir / "run.toml");
  if (config.lora.enabled)
    throw Error(run_dir.string() + ": a LoRA run; merge its LoRA into checkpoints to diagnose them");
  DiagnosisRequest r;
  r.base = config.model.checkpoint;
  if (!config.model.config.empty()) r.config = config.model.config;
  for (const auto& entry : fs::directory_iterator(run_dir / "checkpoints")) {
    const auto name = entry.path().filename().string();
    if (name.ends_with(".state.safetensors") || name.ends_with("-ema.safetensors") || name.ends_with("-ema"))
      continue;
    if (entry.path().extension() == ".safetensors" || entry.is_directory())
      r.checkpoints.push_back(entry.path());
  }
  std::sort(r.checkpoints.begin(), r.checkpoints.end());
  if (r.checkpoints.empty()) throw_file_error(run_dir, "holds no checkpoints to diagnose");
  r.settings.sampler = config.samples.sampler;
  r.settings.steps = config.samples.steps;
  r.settings.cfg = config.samples.cfg;
  r.settings.width = config.samples.width;
  r.settings.height = config.samples.height;
  r.settings.clip_skip = config.text_encoder.clip_skip;
  return r;
}

void write_diagnosis(const Diagnosis& d, const fs::path& out_dir) {
  fs::create_directories(out_dir);
  write_text_atomically(out_dir / "diagnose.json", d.to_json().dump(2) + "\n");
  // Statistics relative to the base (1.0 = unchanged) and drift per component, along the run.
  std::vector<Series> stats(5), drift(2);
  const char* names[] = {"saturation", "contrast", "colourfulness", "high-frequency energy",
                         "seed diversity"};
  for (size_t k = 0; k < 5; ++k) stats[k].label = names[k];
  drift[0].label = "text encoder";
  drift[1].label = "UNet";
  auto ratio = [](double now, double base) { return base != 0 ? now / base : std::nan(""); };
  for (size_t i = 0; i <= d.checkpoints.size(); ++i) {
    const auto& s = i == 0 ? d.base : d.checkpoints[i - 1].images;
    const double values[] = {
        ratio(s.mean.saturation, d.base.mean.saturation), ratio(s.mean.contrast, d.base.mean.contrast),
        ratio(s.mean.colourfulness, d.base.mean.colourfulness),
        ratio(s.mean.high_frequency, d.base.mean.high_frequency), ratio(s.diversity, d.base.diversity)};
    for (size_t k = 0; k < 5; ++k) {
      stats[k].x.push_back(static_cast<double>(i));
      stats[k].y.push_back(values[k]);
    }
    if (i > 0) {
      drift[0].x.push_back(static_cast<double>(i));
      drift[0].y.push_back(component_drift(d.checkpoints[i - 1].drift, "te"));
      drift[1].x.push_back(static_cast<double>(i));
      drift[1].y.push_back(component_drift(d.checkpoints[i - 1].drift, "unet"));
    }
  }
  write_text_atomically(out_dir / "image_statistics.svg",
                        line_plot_svg(stats, {"Image statistics relative to the base model",
                                              "checkpoint (0 = base)", "value / base value"}));
  write_text_atomically(out_dir / "weight_drift.svg",
                        line_plot_svg(drift, {"Weight drift from the base model", "checkpoint",
                                              "relative drift ‖W − W₀‖ / ‖W₀‖"}));
  write_text_atomically(out_dir / "weight_drift_blocks.svg", drift_blocks_svg(d));

  // Prompt adherence: the fraction of world-prompt cells drawn with the asked colour, shape, both.
  const fs::path adherence_svg = out_dir / "prompt_adherence.svg";
  if (!d.base.adherence) {
    fs::remove(adherence_svg);  // a plot from an earlier diagnosis would no longer be true
    return;
  }
  std::vector<Series> adherence(3);
  adherence[0].label = "colour and shape as asked";
  adherence[1].label = "colour as asked";
  adherence[2].label = "shape as asked";
  for (size_t i = 0; i <= d.checkpoints.size(); ++i) {
    const auto& a = i == 0 ? d.base.adherence : d.checkpoints[i - 1].images.adherence;
    const double values[] = {a ? a->both : std::nan(""), a ? a->colour : std::nan(""),
                             a ? a->shape : std::nan("")};
    for (size_t k = 0; k < 3; ++k) {
      adherence[k].x.push_back(static_cast<double>(i));
      adherence[k].y.push_back(values[k]);
    }
  }
  write_text_atomically(
      adherence_svg,
      line_plot_svg(adherence, {fmt::format("Prompt adherence ({} cells a model)", d.base.adherence->cells),
                                "checkpoint (0 = base)", "fraction of cells"}));
}

}  // namespace kiln
