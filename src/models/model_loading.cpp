#include "models/model_loading.h"

#include <sstream>

#include "util/error.h"

namespace kiln {
namespace {

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << sizes;
  return s.str();
}

void list_names(std::ostringstream& msg, const char* what, const std::vector<std::string>& names) {
  if (names.empty()) return;
  constexpr size_t kShown = 20;
  msg << "; " << names.size() << " " << what << ":";
  for (size_t i = 0; i < std::min(names.size(), kShown); ++i) msg << " " << names[i];
  if (names.size() > kShown) msg << " ... (" << names.size() - kShown << " more)";
}

}  // namespace

StateDict state_dict(const torch::nn::Module& module) {
  StateDict dict;
  for (const auto& p : module.named_parameters()) dict[p.key()] = p.value();
  for (const auto& b : module.named_buffers()) dict[b.key()] = b.value();
  return dict;
}

void load_state_dict(torch::nn::Module& module, const StateDict& dict, const std::string& source) {
  const StateDict targets = state_dict(module);
  std::vector<std::string> missing, unexpected, misshaped;
  for (const auto& [name, target] : targets) {
    auto it = dict.find(name);
    if (it == dict.end())
      missing.push_back(name);
    else if (it->second.sizes() != target.sizes())
      misshaped.push_back(name + " " + shape_string(it->second.sizes()) + " (model " +
                          shape_string(target.sizes()) + ")");
  }
  for (const auto& [name, tensor] : dict)
    if (!targets.count(name)) unexpected.push_back(name);
  if (!missing.empty() || !unexpected.empty() || !misshaped.empty()) {
    std::ostringstream msg;
    msg << "does not fit the model";
    list_names(msg, "missing", missing);
    list_names(msg, "unexpected", unexpected);
    list_names(msg, "mis-shaped", misshaped);
    throw_file_error(source, msg.str());
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : targets) {
    const auto& value = dict.at(name);
    target.copy_(value.to(target.device(), target.scalar_type()));
  }
}

StableDiffusionModels::StableDiffusionModels(const ModelConfigs& c)
    : configs(c), text_encoder(c.text_encoder), unet(c.unet), vae(c.vae) {}

StableDiffusionModels build_models(const Checkpoint& checkpoint) {
  for (auto part : {Component::UNet, Component::TextEncoder, Component::VAE})
    if (checkpoint.component(part).empty())
      throw_file_error(checkpoint.source, "has no " + std::string(component_name(part)) + " weights");
  if (!checkpoint.configs_complete) throw_file_error(checkpoint.source, std::string(kHeadCountsUnknown));
  StableDiffusionModels models(checkpoint.configs);
  load_state_dict(*models.unet, checkpoint.unet, checkpoint.source.string() + " (unet)");
  load_state_dict(*models.text_encoder, checkpoint.text_encoder,
                  checkpoint.source.string() + " (text encoder)");
  load_state_dict(*models.vae, checkpoint.vae, checkpoint.source.string() + " (vae)");
  models.unet->eval();
  models.text_encoder->eval();
  models.vae->eval();
  return models;
}

void to_device(const StableDiffusionModels& models, torch::Device device) {
  auto placed = models;  // non-const handles to the same modules
  placed.text_encoder->to(device);
  placed.unet->to(device);
  placed.vae->to(device);
}

Checkpoint checkpoint_from_models(const StableDiffusionModels& models) {
  auto copy = [](const torch::nn::Module& module) {
    StateDict dict;
    for (const auto& [name, tensor] : state_dict(module)) dict[name] = tensor.detach().clone();
    return dict;
  };
  Checkpoint checkpoint;
  checkpoint.source = "<in memory>";
  checkpoint.configs = models.configs;
  checkpoint.unet = copy(*models.unet);
  checkpoint.text_encoder = copy(*models.text_encoder);
  checkpoint.vae = copy(*models.vae);
  return checkpoint;
}

}  // namespace kiln
