// LoRA training: low-rank updates W = W₀ + (α/r)·U·D on chosen layers of the text encoder and the
// UNet, with W₀ frozen (kohya sd-scripts' networks.lora). kiln folds the update into each target
// layer's weight before every forward (one small matrix product per layer), so the networks need no
// LoRA-specific code and gradients reach U and D through the folded weight.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "models/model_loading.h"
#include "train/optimizer.h"

namespace kiln {

struct LoraOptions {
  int64_t rank = 4;
  double alpha = 1.0;  // kohya's default network_alpha: scale α/r = 0.25 at rank 4
  // unet_attention (attn1/attn2 q, k, v, out), unet_proj (proj_in/out), unet_ff (ff.net.0.proj,
  // ff.net.2), text_encoder (self-attention q, k, v, out and mlp fc1, fc2), unet_conv (resnet and
  // resampler 3×3 convolutions, kohya's LoCon conv_dim). The default is kohya's default set.
  std::vector<std::string> targets{"unet_attention", "unet_proj", "unet_ff", "text_encoder"};
  // Regularisers that act on the update itself, so they survive folding it into the weight (kohya's
  // rank_dropout and module_dropout; kiln draws them per optimizer step rather than per sample).
  double rank_dropout = 0.0;    // each rank component dropped with this probability, the rest scaled up
  double module_dropout = 0.0;  // a whole module's update skipped with this probability
};

class LoraAdapter {
 public:
  // Finds the target layers of the parts that train and creates their U (zeros) and D (kaiming
  // uniform, from `seed`), so a fresh adapter leaves the model unchanged.
  LoraAdapter(StableDiffusionModels& models, const LoraOptions& options, bool text_encoder, bool unet,
              uint64_t seed);

  // "lora_unet_…" / "lora_te_…" modules' down and up as named parameters, for one part.
  std::vector<NamedParameter> parameters(const std::string& part) const;
  // Folds the current U, D into the target layers' weights (with a graph when grad mode is on).
  // `dropout_step` set: training step whose dropout masks to draw; unset: no dropout (evaluation).
  void inject(std::optional<int64_t> dropout_step = std::nullopt);
  // kohya-format LoRA: <name>.lora_down.weight, .lora_up.weight, .alpha, with `metadata`.
  void save(const std::filesystem::path& path, torch::ScalarType dtype, const Metadata& metadata) const;
  size_t modules() const { return targets_.size(); }

 private:
  struct Target {
    std::string name;                 // kohya name
    std::string part;                 // "text_encoder" | "unet"
    torch::Tensor* weight = nullptr;  // the layer's weight member (what its forward reads)
    torch::Tensor base;               // W₀
    torch::Tensor down, up;
  };
  std::vector<Target> targets_;
  LoraOptions options_;
  uint64_t seed_;
};

}  // namespace kiln
