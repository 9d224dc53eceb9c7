// Exact tensor-name mapping between the original LDM single-file layout and the diffusers layout
// for SD 1.x (4 resolution levels, 2 resnets per down block, 3 per up block), per component.
#pragma once
#include <torch/types.h>

#include <optional>
#include <string>
#include <string_view>

namespace kiln {

enum class Component { UNet, TextEncoder, VAE };

std::string_view component_name(Component c);  // "unet", "text_encoder", "vae"

// LDM single-file prefixes of each component.
inline constexpr std::string_view kLdmUNetPrefix = "model.diffusion_model.";
inline constexpr std::string_view kLdmTextEncoderPrefix = "cond_stage_model.transformer.";
inline constexpr std::string_view kLdmVAEPrefix = "first_stage_model.";
// Present in real SD 1.x files, a buffer of arange(77) that current transformers does not save.
inline constexpr std::string_view kLdmPositionIdsKey =
    "cond_stage_model.transformer.text_model.embeddings.position_ids";

// The LDM prefix of a component ("model.diffusion_model." ...).
std::string_view ldm_prefix(Component c);
// Which component a full LDM key belongs to (nullopt: schedule buffers, EMA copies, ...).
std::optional<Component> ldm_component(std::string_view ldm_key);

// Full LDM key -> diffusers key within the component (e.g.
// "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"
// -> "down_blocks.0.resnets.0.norm1.weight"). Throws kiln::Error (message without a file name: callers add
// it) for a key with no SD 1.x meaning, e.g. a block index past the SD 1.x structure. Also accepts the very
// old CLIP keys without "text_model." (cond_stage_model.transformer.encoder.* ...). The result is always a
// current diffusers name.
std::string ldm_to_diffusers(Component c, std::string_view ldm_key);
// Diffusers key within the component -> full LDM key. Accepts older diffusers VAE attention names
// (query/key/value/proj_attn). Inverse of ldm_to_diffusers on every SD 1.x key.
std::string diffusers_to_ldm(Component c, std::string_view diffusers_key);

// Renames older diffusers VAE attention keys (query, key, value, proj_attn) to the current ones.
std::string modern_diffusers_key(Component c, std::string_view diffusers_key);

// VAE mid-block attention q/k/v/out weights are 1x1 convs [C,C,1,1] in LDM files and Linear [C,C] in
// diffusers; these reshape a tensor for its destination (identity for every other key).
bool is_vae_attention_weight(Component c, std::string_view diffusers_key);
torch::Tensor ldm_tensor_to_diffusers(Component c, std::string_view diffusers_key, const torch::Tensor& t);
torch::Tensor diffusers_tensor_to_ldm(Component c, std::string_view diffusers_key, const torch::Tensor& t);

}  // namespace kiln
