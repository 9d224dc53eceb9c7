#include "surgery/lora_merge.h"

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "util/error.h"

namespace kiln {
namespace {

double component_multiplier(Component c, double multiplier, double text_encoder_multiplier) {
  return c == Component::TextEncoder && !std::isnan(text_encoder_multiplier) ? text_encoder_multiplier
                                                                             : multiplier;
}

std::string shape_text(at::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ",")); }

}  // namespace

torch::Tensor lora_delta(const LoraModule& module, at::IntArrayRef weight_shape, double multiplier) {
  const int64_t r = module.rank();
  const auto up = module.up.to(torch::kFloat).reshape({weight_shape[0], r});
  const auto down = module.down.to(torch::kFloat).reshape({r, -1});
  // kohya's order of operations (multiplier, then scale), so a float32 merge matches it bit for bit.
  auto delta = torch::mm(up, down) * multiplier * module.scale();
  return delta.reshape(weight_shape);
}

void merge_lora(Checkpoint& checkpoint, const LoraFile& lora, double multiplier,
                double text_encoder_multiplier) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> problems;
  for (const auto& m : lora.modules) {
    auto& dict = checkpoint.component(m.component);
    auto it = dict.find(m.weight_key);
    if (it == dict.end()) {
      problems.push_back(
          fmt::format("{} ({} {} is absent)", m.name, component_name(m.component), m.weight_key));
      continue;
    }
    if (it->second.numel() != m.up.size(0) * (m.down.numel() / m.rank()) ||
        it->second.size(0) != m.up.size(0)) {
      problems.push_back(
          fmt::format("{} (weight {} is {})", m.name, m.weight_key, shape_text(it->second.sizes())));
      continue;
    }
  }
  if (!problems.empty())
    throw_file_error(checkpoint.source, "the LoRA does not fit this checkpoint: " +
                                            fmt::format("{}", fmt::join(problems, ", ")));
  for (const auto& m : lora.modules) {
    torch::Tensor& weight = checkpoint.component(m.component).at(m.weight_key);
    const double mult = component_multiplier(m.component, multiplier, text_encoder_multiplier);
    // A new tensor, not an in-place add: checkpoint tensors may be read-only views of a mapped file.
    weight = (weight.to(torch::kFloat) + lora_delta(m, weight.sizes(), mult)).to(weight.scalar_type());
  }
}

void apply_lora(StableDiffusionModels& models, const LoraFile& lora, double multiplier,
                double text_encoder_multiplier) {
  torch::NoGradGuard no_grad;
  const StateDict unet = state_dict(*models.unet), text_encoder = state_dict(*models.text_encoder);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> updates;  // parameter, delta
  std::vector<std::string> problems;
  for (const auto& m : lora.modules) {
    const StateDict& dict = m.component == Component::UNet ? unet : text_encoder;
    auto it = m.component == Component::VAE ? dict.end() : dict.find(m.weight_key);
    if (it == dict.end()) {
      problems.push_back(
          fmt::format("{} ({} {} is absent)", m.name, component_name(m.component), m.weight_key));
      continue;
    }
    const auto& param = it->second;
    if (param.numel() != m.up.size(0) * (m.down.numel() / m.rank()) || param.size(0) != m.up.size(0)) {
      problems.push_back(
          fmt::format("{} (weight {} is {})", m.name, m.weight_key, shape_text(param.sizes())));
      continue;
    }
    const double mult = component_multiplier(m.component, multiplier, text_encoder_multiplier);
    updates.emplace_back(param, lora_delta(m, param.sizes(), mult));
  }
  // All or nothing: a LoRA that does not fit leaves the networks untouched.
  if (!problems.empty())
    throw Error("the LoRA does not fit the loaded model: " + fmt::format("{}", fmt::join(problems, ", ")));
  for (auto& [param, delta] : updates) {
    if (param.scalar_type() == torch::kFloat)
      param.add_(delta.to(param.device()));
    else
      param.copy_(param.to(torch::kFloat) + delta.to(param.device()));
  }
}

LoraFile extract_lora(const Checkpoint& tuned, const Checkpoint& base, int64_t rank,
                      std::vector<double>* retained_energy) {
  if (rank < 1) throw Error(fmt::format("LoRA rank must be at least 1 (got {})", rank));
  torch::NoGradGuard no_grad;
  LoraFile lora;
  if (retained_energy) retained_energy->clear();
  std::vector<std::string> mismatched;
  bool compared = false;
  const LoraTargets targets = lora_targets(base);
  for (const auto& target : targets.all()) {
    if (!is_kohya_default_target(target) || !tuned.has(target.component)) continue;
    const auto& tuned_dict = tuned.component(target.component);
    auto it = tuned_dict.find(target.weight_key);
    if (it == tuned_dict.end() || it->second.sizes().vec() != target.shape) {
      mismatched.push_back(target.weight_key);
      continue;
    }
    compared = true;
    const int64_t out = target.shape[0];
    const auto base_weight = base.component(target.component).at(target.weight_key);
    const auto delta = (it->second.to(torch::kFloat) - base_weight.to(torch::kFloat)).reshape({out, -1});
    if (!delta.any().item<bool>()) continue;
    const auto [u, s, vh] = torch::linalg_svd(delta, /*full_matrices=*/false, c10::nullopt);
    const int64_t r = std::min<int64_t>(rank, s.size(0));
    const auto s2 = s.to(torch::kDouble).square();
    if (retained_energy) retained_energy->push_back((s2.slice(0, 0, r).sum() / s2.sum()).item<double>());
    // √S on both sides keeps up and down on the same scale, which fp16 storage needs.
    const auto root = s.slice(0, 0, r).sqrt();
    auto up = u.slice(1, 0, r) * root.unsqueeze(0);
    auto down = root.unsqueeze(1) * vh.slice(0, 0, r);
    if (target.shape.size() == 4) {
      up = up.reshape({out, r, 1, 1});
      down = down.reshape({r, target.shape[1], target.shape[2], target.shape[3]});
    }
    lora.modules.push_back({target.name, target.component, target.weight_key, down.contiguous(),
                            up.contiguous(), static_cast<double>(r)});
  }
  if (!mismatched.empty())
    throw_file_error(tuned.source,
                     fmt::format("not the same architecture as {}: {} weights missing or shaped "
                                 "differently, e.g. {}",
                                 base.source.string(), mismatched.size(), mismatched.front()));
  if (!compared)
    throw_file_error(tuned.source, "no UNet or text encoder weights to compare with " + base.source.string());
  return lora;
}

}  // namespace kiln
