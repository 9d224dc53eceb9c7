#include "lab/burn_signs.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "util/error.h"

namespace kiln {

namespace {

double change(double now, double base) { return base != 0 ? (now - base) / std::abs(base) : 0.0; }

struct SignKind {
  const char* name;
  Part part;
  double DiagnosisThresholds::*threshold;
};

constexpr SignKind kSigns[] = {
    {"saturation", Part::Unet, &DiagnosisThresholds::saturation_increase},
    {"contrast", Part::Unet, &DiagnosisThresholds::contrast_increase},
    {"high-frequency texture", Part::Unet, &DiagnosisThresholds::high_frequency_increase},
    {"seed diversity", Part::Unet, &DiagnosisThresholds::diversity_drop},
    {"style bleed", Part::Unet, &DiagnosisThresholds::style_bleed},
    {"control pictures changed", Part::Unet, &DiagnosisThresholds::control_change},
    {"prompt adherence", Part::TextEncoder, &DiagnosisThresholds::adherence_drop},
    {"prompt drift", Part::TextEncoder, &DiagnosisThresholds::prompt_drift},
};

std::string sign_text(const std::string& name, double value, const ModelImageStats& now, const ModelImageStats& base) {
  if (name == "seed diversity") return fmt::format("seed diversity {:+.0f}%", -100 * value);
  if (name == "style bleed") return fmt::format("style bleed {:.0f}%", 100 * value);
  if (name == "control pictures changed") return fmt::format("control pictures changed {:.2f}", value);
  if (name == "prompt drift") return fmt::format("prompt drift {:.2f}", value);
  if (name == "prompt adherence") {
    const auto &a = *now.adherence, &b = *base.adherence;
    if (b.colour - a.colour > b.both - a.both)
      return fmt::format("prompt adherence (colour) {:.0f}% -> {:.0f}%", 100 * b.colour, 100 * a.colour);
    return fmt::format("prompt adherence {:.0f}% -> {:.0f}%", 100 * b.both, 100 * a.both);
  }
  return fmt::format("{} {:+.0f}%", name, 100 * value);
}

}  // namespace

bool mentions_phrase(const std::string& prompt, const std::string& phrase) {
  if (phrase.empty()) return false;
  const auto lower = [](std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return text;
  };
  return lower(prompt).find(lower(phrase)) != std::string::npos;
}

ModelImageStats measure_cells(DrawnCells cells, const ModelImageStats* base,
                              const std::optional<LookDescriptor>& training_look) {
  ModelImageStats out;
  std::vector<std::pair<WorldPrompt, Image>> world_cells;  // for prompt adherence
  for (size_t p = 0; p < cells.control.size(); ++p) {
    const auto world = parse_world_prompt(cells.control_prompts.at(p));
    auto& images = cells.control[p];
    for (const auto& image : images) {
      if (world) world_cells.emplace_back(*world, image);
      const auto stats = image_stats(image);
      out.mean.saturation += stats.saturation;
      out.mean.contrast += stats.contrast;
      out.mean.colourfulness += stats.colourfulness;
      out.mean.high_frequency += stats.high_frequency;
    }
    if (images.size() >= 2) out.diversity += seed_diversity(images) / static_cast<double>(cells.control.size());
    for (auto& image : images) out.control_cells.push_back(std::move(image));
  }
  const double n = static_cast<double>(std::max<size_t>(1, out.control_cells.size()));
  out.mean.saturation /= n;
  out.mean.contrast /= n;
  out.mean.colourfulness /= n;
  out.mean.high_frequency /= n;
  out.styled_cells = std::move(cells.styled);
  if (!world_cells.empty()) out.adherence = prompt_adherence(world_cells);
  if (training_look)
    for (const auto& cell : out.control_cells) out.control_looks.push_back(describe_look(cell));
  if (!base) return out;
  if (base->control_cells.size() != out.control_cells.size() || base->styled_cells.size() != out.styled_cells.size())
    throw Error(fmt::format("burn signs: {} + {} cells against the base's {} + {}", out.control_cells.size(),
                            out.styled_cells.size(), base->control_cells.size(), base->styled_cells.size()));
  const auto mean_change = [](const std::vector<Image>& now, const std::vector<Image>& before) {
    double total = 0;
    for (size_t i = 0; i < now.size(); ++i) total += rms_difference(now[i], before[i]);
    return total / static_cast<double>(now.size());
  };
  if (!out.control_cells.empty()) out.change_control = mean_change(out.control_cells, base->control_cells);
  if (!out.styled_cells.empty()) out.change_styled = mean_change(out.styled_cells, base->styled_cells);
  if (training_look && !out.control_cells.empty()) {
    // Cell by cell, against the base's picture of the same prompt and seed: a mean over all the
    // pictures would let the stripes of a few drown in the colour drift of the rest.
    if (base->control_looks.size() != out.control_looks.size())
      throw Error("burn signs: the base's cells were measured without the training look");
    double bleed = 0;
    for (size_t i = 0; i < out.control_cells.size(); ++i)
      bleed += std::min(1.0, look_gain_towards(out.control_looks[i], base->control_looks[i], *training_look));
    out.style_bleed = bleed / static_cast<double>(out.control_cells.size());
  }
  return out;
}

const char* part_name(Part part) { return part == Part::Unet ? "UNet" : "text encoder"; }

double sign_value(const std::string& name, const ModelImageStats& now, const ModelImageStats& base) {
  if (name == "saturation") return change(now.mean.saturation, base.mean.saturation);
  if (name == "contrast") return change(now.mean.contrast, base.mean.contrast);
  if (name == "high-frequency texture") return change(now.mean.high_frequency, base.mean.high_frequency);
  if (name == "seed diversity") return -change(now.diversity, base.diversity);
  if (name == "style bleed") return now.style_bleed.value_or(0.0);
  if (name == "control pictures changed") return now.change_control.value_or(0.0);
  if (name == "prompt drift") return now.prompt_drift.value_or(0.0);
  if (name == "prompt adherence") {
    if (!now.adherence || !base.adherence) return 0.0;
    if (std::min(now.adherence->cells, base.adherence->cells) < kMinAdherenceCells) return 0.0;
    // A drifting text encoder changes colours before shapes, so the colour fraction counts alone too.
    return std::max(base.adherence->both - now.adherence->both, base.adherence->colour - now.adherence->colour);
  }
  return 0.0;
}

std::vector<BurnSign> crossed_signs(const ModelImageStats& now, const ModelImageStats& base,
                                    const DiagnosisThresholds& t) {
  std::vector<BurnSign> out;
  for (const auto& kind : kSigns) {
    const double value = sign_value(kind.name, now, base), threshold = t.*kind.threshold;
    if (value > threshold) out.push_back({kind.name, value, threshold, sign_text(kind.name, value, now, base), kind.part});
  }
  return out;
}

double sign_threshold(const std::string& name, const DiagnosisThresholds& t) {
  for (const auto& kind : kSigns)
    if (name == kind.name) return t.*kind.threshold;
  throw Error("burn signs: no sign is called '" + name + "'");
}

DiagnosisThresholds every_sign_thresholds() {
  DiagnosisThresholds t;
  for (const auto& kind : kSigns) t.*kind.threshold = 0;
  return t;
}

double burn_score(const ModelImageStats& now, const ModelImageStats& base, const DiagnosisThresholds& t) {
  double score = 0;
  for (const auto& kind : kSigns) {
    const double threshold = t.*kind.threshold;
    if (threshold > 0) score += std::max(0.0, sign_value(kind.name, now, base)) / threshold;
  }
  return score;
}

}  // namespace kiln
