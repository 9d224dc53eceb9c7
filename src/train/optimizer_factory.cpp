#include "train/optimizer_factory.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "train/adamw_8bit.h"
#include "train/dadapt_adam.h"
#include "train/lion.h"
#include "train/prodigy.h"
#include "train/sgd.h"
#include "util/error.h"

namespace kiln {

std::vector<std::string> optimizer_names() {
  return {"adamw", "adamw8bit", "lion", "sgd", "dadapt_adam", "prodigy"};
}

Optimizer* PartOptimizers::of_part(const std::string& part) const {
  for (const auto& e : entries)
    if (std::find(e.parts.begin(), e.parts.end(), part) != e.parts.end()) return e.optimizer.get();
  return nullptr;
}

namespace {

bool adaptive(const std::string& name) { return name == "dadapt_adam" || name == "prodigy"; }

std::unique_ptr<Optimizer> single(const PartSection& s, std::vector<NamedParameter> p) {
  if (s.optimizer == "adamw")
    return std::make_unique<AdamW>(std::move(p), AdamWOptions{s.lr, s.beta1, s.beta2, s.eps, s.weight_decay});
  if (s.optimizer == "adamw8bit") {
    AdamW8bitOptions o;
    o.lr = s.lr, o.beta1 = s.beta1, o.beta2 = s.beta2, o.eps = s.eps, o.weight_decay = s.weight_decay;
    o.block_size = s.block_size;
    return std::make_unique<AdamW8bit>(std::move(p), o);
  }
  if (s.optimizer == "lion")
    return std::make_unique<Lion>(std::move(p), LionOptions{s.lr, s.beta1, s.beta2, s.weight_decay});
  if (s.optimizer == "sgd")
    return std::make_unique<SGD>(std::move(p), SGDOptions{s.lr, s.beta1, s.weight_decay});
  throw Error(fmt::format("unknown optimizer '{}' ({})", s.optimizer, fmt::join(optimizer_names(), ", ")));
}

std::unique_ptr<Optimizer> adaptive_optimizer(const PartSection& s, std::vector<ParameterGroup> groups,
                                              double lr) {
  if (s.optimizer == "dadapt_adam") {
    DAdaptAdamOptions o;
    o.lr = lr, o.beta1 = s.beta1, o.beta2 = s.beta2, o.eps = s.eps, o.weight_decay = s.weight_decay;
    return std::make_unique<DAdaptAdam>(std::move(groups), o);
  }
  ProdigyOptions o;
  o.lr = lr, o.beta1 = s.beta1, o.beta2 = s.beta2, o.eps = s.eps, o.weight_decay = s.weight_decay;
  return std::make_unique<Prodigy>(std::move(groups), o);
}

}  // namespace

PartOptimizers make_optimizers(std::vector<TrainedPart> parts) {
  PartOptimizers out;
  const bool shared =
      parts.size() == 2 && adaptive(parts[0].settings->optimizer) &&
      parts[0].settings->optimizer == parts[1].settings->optimizer &&
      !(parts[0].settings->optimizer == "prodigy" && parts[0].settings->lr != parts[1].settings->lr);
  if (shared) {
    const auto& name = parts[0].settings->optimizer;
    const double lr = std::max(parts[0].settings->lr, parts[1].settings->lr);
    std::vector<ParameterGroup> groups;
    for (auto& part : parts) {
      const double scale = lr > 0 ? part.settings->lr / lr : 1.0;
      groups.push_back({part.name, std::move(part.parameters), scale});
    }
    if (groups[0].layer_scale != groups[1].layer_scale)
      out.notes.push_back(
          fmt::format("{} estimates one step size d for both parts: text_encoder.lr {} and unet.lr {} become "
                      "lr {} with layer "
                      "scales {} and {} (the schedule and warm-up of [unet] drive it)",
                      name, parts[0].settings->lr, parts[1].settings->lr, lr, groups[0].layer_scale,
                      groups[1].layer_scale));
    PartOptimizers::Entry e;
    e.optimizer = adaptive_optimizer(*parts[1].settings, std::move(groups), lr);
    for (const auto& part : parts) e.parts.push_back(part.name);
    e.state_prefix = "shared";
    e.base_lr = lr;
    e.schedule_from = parts[1].settings;
    out.entries.push_back(std::move(e));
    return out;
  }
  if (parts.size() == 2 && parts[0].settings->optimizer == "prodigy" &&
      parts[1].settings->optimizer == "prodigy")
    out.notes.push_back(
        fmt::format("prodigy with different learning rates per part ({} and {}): each part gets its own "
                    "Prodigy and its own d",
                    parts[0].settings->lr, parts[1].settings->lr));
  for (auto& part : parts) {
    PartOptimizers::Entry e;
    const auto& s = *part.settings;
    e.optimizer = adaptive(s.optimizer)
                      ? adaptive_optimizer(s, {{part.name, std::move(part.parameters), 1.0}}, s.lr)
                      : single(s, std::move(part.parameters));
    e.parts.push_back(part.name);
    e.state_prefix = part.name;
    e.base_lr = s.lr;
    e.schedule_from = part.settings;
    out.entries.push_back(std::move(e));
  }
  return out;
}

}  // namespace kiln
