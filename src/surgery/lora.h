// LoRA files in kohya-ss sd-scripts format (specs §7): reading them against a model (other tools'
// naming variants included), the kohya module names of a model, and writing them with kohya metadata.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/key_map.h"
#include "io/safetensors.h"
#include "models/model_loading.h"

namespace kiln {

// One low-rank update ΔW = (alpha / rank) · up @ down of one weight of the model.
struct LoraModule {
  std::string name;        // kohya, e.g. lora_unet_down_blocks_0_attentions_0_proj_in
  Component component;     // UNet or TextEncoder
  std::string weight_key;  // diffusers name in that component, e.g. down_blocks.0.attentions.0.proj_in.weight
  torch::Tensor down;      // [r, in] or [r, in, kh, kw]
  torch::Tensor up;        // [out, r] or [out, r, 1, 1]
  double alpha = 0;        // = rank when the file has none (or 0)

  int64_t rank() const { return down.size(0); }
  double scale() const { return alpha / static_cast<double>(rank()); }
};

struct LoraFile {
  std::vector<LoraModule> modules;  // in file-name order
  Metadata metadata;
  // Tensor names that matched no module of the model; filled only when reading with allow_unknown
  // (otherwise they are an error).
  std::vector<std::string> unknown_keys;
};

// A weight a LoRA may target.
struct LoraTarget {
  std::string name;  // the kohya name kiln writes (diffusers module path)
  Component component;
  std::string weight_key;
  std::vector<int64_t> shape;
};

// Every Linear / Conv2d weight of a model's UNet and text encoder, addressable by the names tools
// give LoRA modules. The names are generated from the model's own keys (never parsed back), so a
// name can only mean the one weight it was generated from.
class LoraTargets {
 public:
  LoraTargets(const StateDict& unet, const StateDict& text_encoder);

  // kohya name -> target: "lora_unet_" / "lora_te_" + module path with '.' -> '_', for the diffusers
  // path and (UNet) the LDM path ComfyUI also accepts (lora_unet_input_blocks_1_1_proj_in).
  const LoraTarget* by_name(const std::string& kohya_name) const;
  // Diffusers weight key within a component (PEFT / diffusers-format files name modules this way).
  const LoraTarget* by_weight_key(Component c, const std::string& weight_key) const;
  const std::vector<LoraTarget>& all() const { return targets_; }

 private:
  std::vector<LoraTarget> targets_;
  std::map<std::string, size_t> by_name_;
  std::map<std::pair<Component, std::string>, size_t> by_key_;
};

LoraTargets lora_targets(const Checkpoint& checkpoint);
LoraTargets lora_targets(const StableDiffusionModels& models);

// kohya's default targets (specs §7.2): every Linear and 1x1 conv inside a Transformer2DModel of
// the UNet, and the CLIP attention q/k/v/out projections and MLP fc1/fc2.
bool is_kohya_default_target(const LoraTarget& target);

struct LoraReadOptions {
  // Tensors that match no module of the model are returned in LoraFile::unknown_keys instead of
  // being an error (a LoRA for another architecture applied partially, as A1111 does).
  bool allow_unknown = false;
};

// Reads a LoRA file and resolves every module to a weight of the model `targets` describes.
// Accepted tensor names: kohya "<name>.lora_down.weight / .lora_up.weight / .alpha" with diffusers
// or LDM module paths, "lora_A / lora_B" in place of down / up, and PEFT/diffusers
// "unet.<path>.lora_A.weight" / "text_encoder.<path>..." ("base_model.model." prefixes allowed).
// A missing or zero alpha means alpha = rank. Unknown names, half modules (down without up),
// non-LoRA networks (LoHa, LoKr, DoRA ...) and shapes that do not fit the target weight throw
// kiln::Error naming the file and the modules.
LoraFile read_lora(const std::filesystem::path& path, const LoraTargets& targets,
                   const LoraReadOptions& options = {});
LoraFile read_lora(const std::filesystem::path& path, const Checkpoint& checkpoint,
                   const LoraReadOptions& options = {});

// Writes kohya's layout (<name>.lora_down.weight, .lora_up.weight in `dtype`; .alpha as an F32
// scalar) with the file's metadata plus kohya's: ss_network_module = networks.lora,
// ss_network_dim, ss_network_alpha ("Dynamic" when modules differ), ss_base_model_version = sd_v1,
// ss_v2 = False, sshs_model_hash (sha256 of the bytes after the header) and sshs_legacy_hash.
void save_lora(const std::filesystem::path& path, const LoraFile& lora,
               torch::ScalarType dtype = torch::kFloat);

// "FILE" or "FILE:RATIO" (the ratio defaults to 1). Only a numeric suffix after the last ':' is a
// ratio, so paths containing ':' still work.
struct LoraSpec {
  std::filesystem::path path;
  double ratio = 1.0;
};
LoraSpec parse_lora_spec(const std::string& text);

}  // namespace kiln
