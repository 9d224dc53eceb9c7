#include "train/burn_watch.h"

#include <fmt/format.h>


#include "lab/diagnosis.h"
#include "lab/prompt_drift.h"

namespace kiln {

namespace fs = std::filesystem;

void SampleRound::add(const std::string& prompt, std::vector<Image> pictures) {
  if (mentions_phrase(prompt, phrase_)) {
    for (auto& picture : pictures) cells_.styled.push_back(std::move(picture));
    return;
  }
  cells_.control_prompts.push_back(prompt);
  cells_.control.push_back(std::move(pictures));
}

BurnWatch::BurnWatch(BurnWatchSettings settings, DrawnCells base_cells, std::vector<torch::Tensor> base_conditioning)
    : settings_(std::move(settings)), base_conditioning_(std::move(base_conditioning)) {
  training_look_ = training_look(settings_.training_images, settings_.width, settings_.height);
  base_ = measure_cells(std::move(base_cells), nullptr, training_look_);
}

BurnCheck BurnWatch::check(const std::string& label, DrawnCells cells,
                           const std::vector<torch::Tensor>& conditioning) const {
  ModelImageStats now = measure_cells(std::move(cells), &base_, training_look_);
  now.prompt_drift = prompt_drift(conditioning, base_conditioning_);
  BurnCheck out;
  out.signs = crossed_signs(now, base_, settings_.thresholds);
  for (auto& sign : out.signs) {
    if (sign.part == Part::Unet && !settings_.unet_trains) sign.part = Part::TextEncoder;
    if (sign.part == Part::TextEncoder && !settings_.te_trains) sign.part = Part::Unet;
  }
  if (now.change_control) out.values["diagnose/change_control"] = *now.change_control;
  if (now.change_styled) out.values["diagnose/change_styled"] = *now.change_styled;
  if (now.style_bleed) out.values["diagnose/style_bleed"] = *now.style_bleed;
  out.values["diagnose/prompt_drift"] = *now.prompt_drift;
  out.values["diagnose/burn_score"] = burn_score(now, base_, settings_.thresholds);
  const auto part = [&](Part p, bool trains) {
    std::vector<std::string> texts;
    for (const auto& sign : out.signs)
      if (sign.part == p) texts.push_back(sign.text);
    if (!texts.empty()) return fmt::format("{} burning: {}", part_name(p), fmt::join(texts, ", "));
    return fmt::format("{} {}", part_name(p), trains ? "within range" : "frozen");
  };
  out.line = fmt::format("{}: {}; {}", label, part(Part::Unet, settings_.unet_trains),
                         part(Part::TextEncoder, settings_.te_trains));
  return out;
}

}  // namespace kiln
