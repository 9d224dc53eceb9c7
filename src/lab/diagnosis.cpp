#include "lab/diagnosis.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "data/buckets.h"
#include "data/image_file.h"
#include "io/checkpoint.h"
#include "lab/prompt_drift.h"
#include "lab/svg_plot.h"
#include "models/model_loading.h"
#include "pipeline/loaded_model.h"
#include "pipeline/txt2img.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxBatch = 8;

// What every model is compared with: the base's pictures and conditioning, and the training look.
struct Reference {
  const ModelImageStats* base = nullptr;  // null while measuring the base itself
  std::vector<torch::Tensor> base_conditioning;
  std::optional<LookDescriptor> training_look;
};

// The pictures of one prompt, seeds in the request's order. Runs of consecutive seeds go through
// the UNet as one batch (image b of a batch uses seed + b, the same noise as its own call): several
// times faster for small models on a CPU.
std::vector<Image> draw_prompt(Txt2Img& txt2img, const std::string& prompt, const DiagnosisRequest& r) {
  std::vector<Image> images;
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
  return images;
}

std::vector<std::string> control_prompts(const DiagnosisRequest& r) {
  std::vector<std::string> out;
  for (const auto& p : r.prompts)
    if (!mentions_phrase(p, r.activation_phrase)) out.push_back(p);
  return out;
}

ModelImageStats image_statistics(const StableDiffusionModels& models, const CLIPTokenizer& tokenizer,
                                 const NoiseScheduleConfig& scheduler, const DiagnosisRequest& r,
                                 const Reference& ref) {
  to_device(models, r.device);
  Txt2Img txt2img(models, tokenizer, NoiseSchedule(scheduler));
  DrawnCells cells;
  for (const auto& prompt : r.prompts) {
    auto images = draw_prompt(txt2img, prompt, r);
    if (mentions_phrase(prompt, r.activation_phrase)) {
      for (auto& image : images) cells.styled.push_back(std::move(image));
    } else {
      cells.control_prompts.push_back(prompt);
      cells.control.push_back(std::move(images));
    }
  }
  const auto controls = cells.control_prompts;
  auto out = measure_cells(std::move(cells), ref.base, ref.training_look);
  if (ref.base) out.prompt_drift = prompt_drift(encode_prompts(txt2img, controls, r.settings.clip_skip), ref.base_conditioning);
  return out;
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
    out["prompt_adherence"] = {{"colour", s.adherence->colour},   {"shape", s.adherence->shape},
                               {"both", s.adherence->both},       {"background", s.adherence->background},
                               {"clean", s.adherence->clean},     {"correct", s.adherence->correct},
                               {"style_free", s.adherence->style_free}, {"cells", s.adherence->cells}};
  if (s.change_control) out["change_control"] = *s.change_control;
  if (s.change_styled) out["change_styled"] = *s.change_styled;
  if (s.style_bleed) out["style_bleed"] = *s.style_bleed;
  if (s.prompt_drift) out["prompt_drift"] = *s.prompt_drift;
  return out;
}

nlohmann::json signs_json(const std::vector<BurnSign>& signs) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& sign : signs)
    out.push_back({{"sign", sign.name},
                   {"value", sign.value},
                   {"threshold", sign.threshold},
                   {"part", part_name(sign.part)},
                   {"text", sign.text}});
  return out;
}

bool part_flagged(const CheckpointDiagnosis& c, Part part) {
  return std::any_of(c.signs.begin(), c.signs.end(), [&](const BurnSign& s) { return s.part == part; });
}

std::string signs_of(const CheckpointDiagnosis& c, Part part) {
  std::vector<std::string> texts;
  for (const auto& sign : c.signs)
    if (sign.part == part) texts.push_back(sign.text);
  return fmt::format("{}", fmt::join(texts, ", "));
}

// "UNet over-trained from e0012 (3 of 4 checkpoints flagged): style bleed 41%, ..." with the
// signs of the first flagged checkpoint; "... within range at every checkpoint" or "unchanged".
std::string part_summary(const Diagnosis& d, Part part) {
  const std::string component = part == Part::Unet ? "unet" : "te";
  const bool trained = std::any_of(d.checkpoints.begin(), d.checkpoints.end(), [&](const CheckpointDiagnosis& c) {
    return component_drift(c.drift, component) > 0;
  });
  const CheckpointDiagnosis* first = nullptr;
  size_t flagged = 0;
  for (const auto& c : d.checkpoints) {
    if (!part_flagged(c, part)) continue;
    if (!first) first = &c;
    ++flagged;
  }
  if (!first)
    return fmt::format("{} {}", part_name(part), trained ? "within range at every checkpoint" : "unchanged (not trained)");
  return fmt::format("{} over-trained from {} ({} of {} checkpoints flagged): {}", part_name(part), first->label,
                     flagged, d.checkpoints.size(), signs_of(*first, part));
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

// What a person sees first: how far the pictures moved from the base's, with and without the
// activation phrase, how far the control pictures moved towards the training look, and how far
// the text encoder's output for the control prompts moved. 0 = the base model.
std::string change_and_bleed_svg(const Diagnosis& d) {
  std::vector<Series> series(4);
  series[0].label = "control pictures changed (RMS)";
  series[1].label = "styled pictures changed (RMS)";
  series[2].label = "style bleed (share of the way to the training look)";
  series[3].label = "prompt drift (conditioning, relative)";
  for (size_t i = 0; i <= d.checkpoints.size(); ++i) {
    const ModelImageStats* s = i == 0 ? nullptr : &d.checkpoints[i - 1].images;
    const auto value = [&](std::optional<double> ModelImageStats::*field) {
      return s == nullptr ? 0.0 : (s->*field).value_or(std::nan(""));
    };
    const double values[] = {value(&ModelImageStats::change_control), value(&ModelImageStats::change_styled),
                             value(&ModelImageStats::style_bleed), value(&ModelImageStats::prompt_drift)};
    for (size_t k = 0; k < series.size(); ++k) {
      series[k].x.push_back(static_cast<double>(i));
      series[k].y.push_back(values[k]);
    }
  }
  // A measure that was never taken (no styled prompts, no training pictures) is left out.
  std::erase_if(series, [](const Series& s) {
    return std::all_of(s.y.begin() + 1, s.y.end(), [](double y) { return std::isnan(y); });
  });
  return line_plot_svg(series, {"Change from the base model", "checkpoint (0 = base)", "value"});
}

}  // namespace

// The training pictures' mean look, each scaled and centre-cropped to the cells' size so texture
// is compared at the same scale. At most kMaxLookPictures, evenly spread over the sorted files.
std::optional<LookDescriptor> training_look(const std::vector<fs::path>& sources, int width, int height) {
  std::vector<fs::path> files;
  for (const auto& source : sources) {
    if (fs::is_directory(source)) {
      for (const auto& entry : fs::directory_iterator(source))
        if (entry.is_regular_file() && is_image_file(entry.path())) files.push_back(entry.path());
    } else {
      files.push_back(source);
    }
  }
  if (files.empty()) return std::nullopt;
  std::sort(files.begin(), files.end());
  const size_t count = std::min(files.size(), kMaxLookPictures);
  std::vector<Image> pictures;
  for (size_t i = 0; i < count; ++i) {
    const Image picture = load_image(files[i * files.size() / count]);
    pictures.push_back(resize_and_crop(picture, {width, height},
                                       CropMode::Center, 0));
  }
  return mean_look(pictures);
}

std::vector<BurnSign> attributed_signs(const CheckpointDiagnosis& c, const ModelImageStats& base,
                                       const DiagnosisThresholds& t) {
  const bool te_trained = component_drift(c.drift, "te") > 0, unet_trained = component_drift(c.drift, "unet") > 0;
  auto signs = crossed_signs(c.images, base, t);
  for (auto& sign : signs) {
    if (c.swap) {
      // The part whose half-swapped model reproduces more of the sign causes it.
      const double by_unet = sign_value(sign.name, c.swap->trained_unet_base_te, base);
      const double by_te = sign_value(sign.name, c.swap->trained_te_base_unet, base);
      if (by_unet != by_te) {
        sign.part = by_unet > by_te ? Part::Unet : Part::TextEncoder;
        continue;
      }
    }
    if (sign.part == Part::Unet && !unet_trained && te_trained) sign.part = Part::TextEncoder;
    if (sign.part == Part::TextEncoder && !te_trained && unet_trained) sign.part = Part::Unet;
  }
  return signs;
}

std::string checkpoint_verdict(const CheckpointDiagnosis& checkpoint, const ModelImageStats& base,
                               const DiagnosisThresholds& t) {
  CheckpointDiagnosis c = checkpoint;
  c.signs = attributed_signs(checkpoint, base, t);
  const double te_drift = component_drift(c.drift, "te"), unet_drift = component_drift(c.drift, "unet");
  const auto part = [&](Part p, bool trained) {
    if (part_flagged(c, p)) return fmt::format("{} over-trained: {}", part_name(p), signs_of(c, p));
    return fmt::format("{} {}", part_name(p), trained ? "within range" : "unchanged");
  };
  return fmt::format("{}: {}; {} ({}drift: text encoder {:.4f}, UNet {:.4f})", c.label, part(Part::Unet, unet_drift > 0),
                     part(Part::TextEncoder, te_drift > 0), c.swap && !c.signs.empty() ? "signs attributed by the swap test; " : "",
                     te_drift, unet_drift);
}

void summarise(Diagnosis& d) {
  d.summary = {part_summary(d, Part::Unet), part_summary(d, Part::TextEncoder)};
  d.recommended.reset();
  size_t first_flagged = d.checkpoints.size();
  for (size_t i = 0; i < d.checkpoints.size() && first_flagged == d.checkpoints.size(); ++i)
    if (!d.checkpoints[i].signs.empty()) first_flagged = i;
  if (d.checkpoints.empty()) return;
  if (first_flagged == d.checkpoints.size()) {
    d.recommended = d.checkpoints.size() - 1;
    d.summary.push_back(fmt::format("recommended checkpoint: {} (the last; no burn sign at any checkpoint)",
                                    d.checkpoints.back().label));
  } else if (first_flagged == 0) {
    d.summary.push_back(fmt::format(
        "recommended checkpoint: none; the first ({}) already shows burn signs: train less, at a lower rate, or "
        "save earlier checkpoints",
        d.checkpoints.front().label));
  } else {
    d.recommended = first_flagged - 1;
    d.summary.push_back(fmt::format("recommended checkpoint: {} (the last before the first burn sign, at {})",
                                    d.checkpoints[first_flagged - 1].label, d.checkpoints[first_flagged].label));
  }
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
  Reference ref;
  ref.training_look = training_look(r.training_images, static_cast<int>(r.settings.width),
                                    static_cast<int>(r.settings.height));
  d.base = image_statistics(base_model.models, base_model.tokenizer, base_model.scheduler, r, ref);
  ref.base = &d.base;
  {
    Txt2Img base_txt2img(base_model.models, base_model.tokenizer);
    ref.base_conditioning = encode_prompts(base_txt2img, control_prompts(r), r.settings.clip_skip);
  }
  for (size_t i = 0; i < r.checkpoints.size(); ++i) {
    const auto& path = r.checkpoints[i];
    say("checkpoint: " + path.string());
    CheckpointDiagnosis c;
    c.label = r.labels.empty() ? path.stem().string() : r.labels[i];
    c.path = path;
    const Checkpoint trained = read_checkpoint(path, r.config);
    c.drift = weight_drift(trained, base);
    auto model = load_model(path, r.config, false);
    c.images = image_statistics(model.models, model.tokenizer, model.scheduler, r, ref);
    const bool last = i + 1 == r.checkpoints.size();
    const bool flagged = !crossed_signs(c.images, d.base, r.thresholds).empty();
    // With one part frozen the half-swapped models are the checkpoint itself and the base: they
    // would blame nothing the frozen part's zero drift does not already rule out.
    const bool both_trained = component_drift(c.drift, "te") > 0 && component_drift(c.drift, "unet") > 0;
    const bool swap = r.swap_test == SwapTestPolicy::Every ||
                      (both_trained && r.swap_test == SwapTestPolicy::Flagged && (flagged || last)) ||
                      (both_trained && r.swap_test == SwapTestPolicy::Last && last);
    if (swap) {
      say("swap test at " + c.label + ": trained UNet with the base text encoder, and the reverse");
      StableDiffusionModels unet_only = build_models(base), te_only = build_models(base);
      load_state_dict(*unet_only.unet, trained.unet, path.string());
      load_state_dict(*te_only.text_encoder, trained.text_encoder, path.string());
      // What a UNet predicts goes with the UNet.
      c.swap = SwapTest{image_statistics(unet_only, base_model.tokenizer, model.scheduler, r, ref),
                        image_statistics(te_only, base_model.tokenizer, base_model.scheduler, r, ref)};
    }
    c.signs = attributed_signs(c, d.base, r.thresholds);
    c.verdict = checkpoint_verdict(c, d.base, r.thresholds);
    d.checkpoints.push_back(std::move(c));
  }
  summarise(d);
  return d;
}

nlohmann::json Diagnosis::to_json() const {
  nlohmann::json out;
  out["base"] = stats_json(base);
  out["thresholds"] = {{"saturation_increase", thresholds.saturation_increase},
                       {"contrast_increase", thresholds.contrast_increase},
                       {"high_frequency_increase", thresholds.high_frequency_increase},
                       {"diversity_drop", thresholds.diversity_drop},
                       {"adherence_drop", thresholds.adherence_drop},
                       {"style_bleed", thresholds.style_bleed},
                       {"control_change", thresholds.control_change},
                       {"prompt_drift", thresholds.prompt_drift}};
  out["checkpoints"] = nlohmann::json::array();
  out["verdicts"] = nlohmann::json::array();
  for (const auto& c : checkpoints) {
    nlohmann::json drift = nlohmann::json::array();
    for (const auto& g : c.drift)
      drift.push_back({{"group", g.name}, {"relative_drift", g.relative_drift}, {"parameters", g.parameters}});
    nlohmann::json entry = {{"label", c.label},         {"path", c.path.string()}, {"images", stats_json(c.images)},
                            {"drift", drift},           {"signs", signs_json(c.signs)}, {"verdict", c.verdict}};
    if (c.swap)
      entry["swap_test"] = {{"trained_unet_base_text_encoder", stats_json(c.swap->trained_unet_base_te)},
                            {"trained_text_encoder_base_unet", stats_json(c.swap->trained_te_base_unet)}};
    out["checkpoints"].push_back(std::move(entry));
    out["verdicts"].push_back(c.verdict);
  }
  // The last checkpoint's swap test, where the run report's tables look for it.
  if (!checkpoints.empty() && checkpoints.back().swap) out["swap_test"] = out["checkpoints"].back()["swap_test"];
  out["summary"] = summary;
  for (const auto& line : summary) out["verdicts"].push_back(line);
  if (recommended) out["recommended"] = {{"label", checkpoints[*recommended].label},
                                         {"path", checkpoints[*recommended].path.string()}};
  else out["recommended"] = nullptr;
  return out;
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
  write_text_atomically(out_dir / "change_and_bleed.svg", change_and_bleed_svg(d));

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
