#include "train/lora_adapter.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "train/run_seeds.h"
#include "util/error.h"

namespace kiln {

namespace {

bool wants(const LoraOptions& o, const std::string& target) {
  return std::find(o.targets.begin(), o.targets.end(), target) != o.targets.end();
}

// Which kohya target set a layer path belongs to (empty: none).
std::string unet_target(const std::string& path, bool is_linear, int64_t kernel) {
  if (path.find(".attentions.") != std::string::npos) {
    if (path.ends_with("proj_in") || path.ends_with("proj_out")) return "unet_proj";
    if (path.find(".attn1.") != std::string::npos || path.find(".attn2.") != std::string::npos)
      return is_linear ? "unet_attention" : "";
    if (path.ends_with("ff.net.0.proj") || path.ends_with("ff.net.2")) return "unet_ff";
    return "";
  }
  if (!is_linear && kernel == 3 &&
      (path.find(".resnets.") != std::string::npos || path.find("samplers.") != std::string::npos))
    return "unet_conv";
  return "";
}

std::string kohya_name(const std::string& prefix, const std::string& path) {
  std::string name = prefix + "_" + path;
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

}  // namespace

LoraAdapter::LoraAdapter(StableDiffusionModels& models, const LoraOptions& options, bool text_encoder,
                         bool unet, uint64_t seed)
    : options_(options), seed_(seed) {
  if (options.rank_dropout < 0 || options.rank_dropout >= 1 || options.module_dropout < 0 ||
      options.module_dropout >= 1)
    throw Error("lora.rank_dropout and lora.module_dropout must be in [0, 1)");
  for (const auto& t : options.targets)
    if (t != "unet_attention" && t != "unet_proj" && t != "unet_ff" && t != "text_encoder" &&
        t != "unet_conv")
      throw Error("unknown lora target '" + t +
                  "' (unet_attention, unet_proj, unet_ff, text_encoder, unet_conv)");
  if (options.rank < 1) throw Error("lora.rank must be at least 1");
  auto add = [&](const std::string& part, const std::string& prefix, torch::nn::Module& root,
                 auto&& selected) {
    for (const auto& item : root.named_modules("", /*include_self=*/false)) {
      const auto& path = item.key();
      torch::Tensor* weight = nullptr;
      bool is_linear = false;
      int64_t kernel = 1;
      if (auto* linear = dynamic_cast<torch::nn::LinearImpl*>(item.value().get())) {
        weight = &linear->weight;
        is_linear = true;
      } else if (auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(item.value().get())) {
        weight = &conv->weight;
        kernel = conv->options.kernel_size()->at(0);
      }
      if (!weight || !selected(path, is_linear, kernel)) continue;
      Target t;
      t.name = kohya_name(prefix, path);
      t.part = part;
      t.weight = weight;
      t.base = weight->detach();
      const auto out = weight->size(0), in = weight->size(1);
      // down gets the layer's own kernel (kohya); up is a 1×1 / linear map from the rank.
      std::vector<int64_t> down_shape{options.rank, in}, up_shape{out, options.rank};
      if (weight->dim() == 4) {
        down_shape.insert(down_shape.end(), {weight->size(2), weight->size(3)});
        up_shape.insert(up_shape.end(), {1, 1});
      }
      // torch's Linear/Conv default init (kaiming_uniform, a = √5): U(−1/√fan_in, 1/√fan_in).
      const double fan_in =
          static_cast<double>(in * (weight->dim() == 4 ? weight->size(2) * weight->size(3) : 1));
      auto generator = make_generator(seed, RandomStream::Lora, targets_.size());
      t.down = ((torch::rand(down_shape, generator) * 2 - 1) / std::sqrt(fan_in)).requires_grad_(true);
      t.up = torch::zeros(up_shape).requires_grad_(true);
      targets_.push_back(std::move(t));
    }
  };
  if (unet)
    add("unet", "lora_unet", *models.unet, [&](const std::string& path, bool is_linear, int64_t kernel) {
      const auto target = unet_target(path, is_linear, kernel);
      return !target.empty() && wants(options, target);
    });
  if (text_encoder && wants(options, "text_encoder"))
    add("text_encoder", "lora_te", *models.text_encoder,
        [](const std::string& path, bool is_linear, int64_t) {
          return is_linear &&
                 (path.find(".self_attn.") != std::string::npos || path.find(".mlp.") != std::string::npos);
        });
  if (targets_.empty()) throw Error("lora: no layer matches the targets of the parts that train");
}

std::vector<NamedParameter> LoraAdapter::parameters(const std::string& part) const {
  std::vector<NamedParameter> out;
  for (const auto& t : targets_) {
    if (t.part != part) continue;
    out.push_back({t.name + ".lora_down.weight", t.down});
    out.push_back({t.name + ".lora_up.weight", t.up});
  }
  return out;
}

void LoraAdapter::inject(std::optional<int64_t> dropout_step) {
  const double scale = options_.alpha / static_cast<double>(options_.rank);
  const bool dropout = dropout_step && (options_.rank_dropout > 0 || options_.module_dropout > 0);
  for (size_t i = 0; i < targets_.size(); ++i) {
    auto& t = targets_[i];
    auto up = t.up.flatten(1);
    double module_scale = scale;
    if (dropout) {
      // One generator per module and step: the masks depend on the seed and the step only.
      auto generator = make_generator(seed_, RandomStream::Lora, i, static_cast<uint64_t>(*dropout_step) + 1);
      if (torch::rand({1}, generator).item<double>() < options_.module_dropout) {
        *t.weight = t.base;
        continue;
      }
      if (options_.rank_dropout > 0) {
        const auto keep =
            (torch::rand({options_.rank}, generator) >= options_.rank_dropout).to(up.scalar_type());
        up = up * keep;
        module_scale /= 1.0 - options_.rank_dropout;
      }
    }
    const auto delta = torch::matmul(up, t.down.flatten(1)).reshape(t.base.sizes());
    *t.weight = t.base + module_scale * delta;
  }
}

void LoraAdapter::save(const std::filesystem::path& path, torch::ScalarType dtype,
                       const Metadata& metadata) const {
  StateDict tensors;
  for (const auto& t : targets_) {
    tensors[t.name + ".lora_down.weight"] = t.down.detach().to(dtype);
    tensors[t.name + ".lora_up.weight"] = t.up.detach().to(dtype);
    tensors[t.name + ".alpha"] = torch::tensor(static_cast<float>(options_.alpha)).to(dtype);
  }
  SafeTensorsWriteOptions write;
  write.metadata = metadata;
  write.metadata["ss_network_module"] = "networks.lora";
  write.metadata["ss_network_dim"] = std::to_string(options_.rank);
  write.metadata["ss_network_alpha"] = fmt::format("{}", options_.alpha);
  write.metadata["ss_base_model_version"] = "sd_v1";
  write.metadata["ss_v2"] = "False";
  save_safetensors(path, tensors, write);
}

}  // namespace kiln
