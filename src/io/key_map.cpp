// LDM <-> diffusers tensor names for SD 1.x (DF convert_diffusers_to_original_stable_diffusion.py tables,
// spec 6.3).
#include "io/key_map.h"

#include <regex>
#include <utility>

#include "util/error.h"

namespace kiln {
namespace {

using Renames = std::initializer_list<std::pair<std::string_view, std::string_view>>;  // {LDM, diffusers}

// Resnet sub-keys inside UNet blocks.
const Renames kUNetResnetNames = {
    {"in_layers.0.", "norm1."},  {"in_layers.2.", "conv1."},  {"emb_layers.1.", "time_emb_proj."},
    {"out_layers.0.", "norm2."}, {"out_layers.3.", "conv2."}, {"skip_connection.", "conv_shortcut."}};
const Renames kUNetWholeNames = {{"time_embed.0.", "time_embedding.linear_1."},
                                 {"time_embed.2.", "time_embedding.linear_2."},
                                 {"input_blocks.0.0.", "conv_in."},
                                 {"out.0.", "conv_norm_out."},
                                 {"out.2.", "conv_out."}};
// Transformer2D sub-keys are the same in both layouts.
constexpr std::string_view kUNetAttentionParts[] = {"norm.", "proj_in.", "proj_out.", "transformer_blocks."};
const Renames kVAEResnetNames = {{"norm1.", "norm1."},
                                 {"conv1.", "conv1."},
                                 {"norm2.", "norm2."},
                                 {"conv2.", "conv2."},
                                 {"nin_shortcut.", "conv_shortcut."}};
const Renames kVAEAttentionNames = {
    {"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."}, {"proj_out.", "to_out.0."}};
// diffusers < 0.14 named the VAE attention projections differently; still found in many folders.
const Renames kVAELegacyAttentionNames = {{"group_norm.", "group_norm."},
                                          {"query.", "to_q."},
                                          {"key.", "to_k."},
                                          {"value.", "to_v."},
                                          {"proj_attn.", "to_out.0."}};
constexpr std::string_view kTextParts[] = {"embeddings.", "encoder.layers.", "final_layer_norm."};

// SD 1.x structure: 4 resolution levels; 2 resnets per down block, 3 per up block (UNet and VAE).
constexpr int kLevels = 4;
constexpr int kDownLayers = 2;
constexpr int kUpLayers = 3;

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// Renames the leading sub-key of `rest` through `table` (LDM -> diffusers, or back when `to_ldm`).
std::optional<std::string> rename_prefix(std::string_view rest, Renames table, bool to_ldm) {
  for (const auto& [ldm, diffusers] : table) {
    const auto from = to_ldm ? diffusers : ldm, to = to_ldm ? ldm : diffusers;
    if (starts_with(rest, from) && rest.size() > from.size())
      return std::string(to) + std::string(rest.substr(from.size()));
  }
  return std::nullopt;
}

[[noreturn]] void unknown_key(Component c, std::string_view key) {
  throw Error("tensor '" + std::string(key) + "' is not part of an SD 1.x " + std::string(component_name(c)));
}

std::string rename_or_throw(Component c, std::string_view full_key, std::string_view rest, Renames table,
                            bool to_ldm) {
  auto renamed = rename_prefix(rest, table, to_ldm);
  if (!renamed) unknown_key(c, full_key);
  return *renamed;
}

// Transformer2D sub-keys pass through unchanged, but only known ones.
std::string attention_part(std::string_view full_key, std::string_view rest) {
  for (auto part : kUNetAttentionParts)
    if (starts_with(rest, part) && rest.size() > part.size()) return std::string(rest);
  unknown_key(Component::UNet, full_key);
}

int to_int(const std::ssub_match& m) { return std::stoi(m.str()); }

std::string unet_to_diffusers(std::string_view full, std::string_view key) {
  if (auto whole = rename_prefix(key, kUNetWholeNames, false)) return *whole;
  static const std::regex input(R"(^input_blocks\.(\d+)\.(\d+)\.(.+)$)"),
      middle(R"(^middle_block\.(\d+)\.(.+)$)"), output(R"(^output_blocks\.(\d+)\.(\d+)\.(.+)$)");
  constexpr auto U = Component::UNet;
  const std::string k(key);
  std::smatch m;
  if (std::regex_match(k, m, input)) {
    // LDM numbers every layer of the down path: 0 conv_in, then per level 2 resnet(+attention) layers and
    // one downsample layer: 3i+j+1 for resnet j of level i, 3(i+1) for level i's downsampler.
    const int n = to_int(m[1]), layer = to_int(m[2]);
    const std::string rest = m[3];
    if (n < 1 || n > 3 * kLevels - 1) unknown_key(U, full);
    if (n % 3 == 0) {
      if (layer != 0 || !starts_with(rest, "op.") || rest.size() == 3) unknown_key(U, full);
      return "down_blocks." + std::to_string(n / 3 - 1) + ".downsamplers.0.conv." + rest.substr(3);
    }
    const int level = (n - 1) / 3, j = (n - 1) % 3;
    const std::string block = "down_blocks." + std::to_string(level);
    if (layer == 0)
      return block + ".resnets." + std::to_string(j) + "." +
             rename_or_throw(U, full, rest, kUNetResnetNames, false);
    if (layer == 1 && level < kLevels - 1)  // the lowest level has no attention in SD 1.x
      return block + ".attentions." + std::to_string(j) + "." + attention_part(full, rest);
    unknown_key(U, full);
  }
  if (std::regex_match(k, m, middle)) {
    const int n = to_int(m[1]);
    const std::string rest = m[2];
    if (n == 1) return "mid_block.attentions.0." + attention_part(full, rest);
    if (n == 0 || n == 2)
      return "mid_block.resnets." + std::to_string(n / 2) + "." +
             rename_or_throw(U, full, rest, kUNetResnetNames, false);
    unknown_key(U, full);
  }
  if (std::regex_match(k, m, output)) {
    // Up level i (diffusers order) holds output blocks 3i..3i+2; layer 0 resnet, 1 attention (levels > 0),
    // and the upsampler after the last layer of each level but the final one.
    const int n = to_int(m[1]), layer = to_int(m[2]);
    const std::string rest = m[3];
    if (n < 0 || n > 3 * kLevels - 1) unknown_key(U, full);
    const int level = n / 3, j = n % 3;
    const std::string block = "up_blocks." + std::to_string(level);
    const int upsampler_layer = level == 0 ? 1 : 2;
    if (layer == 0)
      return block + ".resnets." + std::to_string(j) + "." +
             rename_or_throw(U, full, rest, kUNetResnetNames, false);
    if (j == kUpLayers - 1 && level < kLevels - 1 && layer == upsampler_layer) {
      if (!starts_with(rest, "conv.") || rest.size() == 5) unknown_key(U, full);
      return block + ".upsamplers.0." + rest;
    }
    if (layer == 1 && level > 0)
      return block + ".attentions." + std::to_string(j) + "." + attention_part(full, rest);
    unknown_key(U, full);
  }
  unknown_key(U, full);
}

std::string unet_to_ldm(std::string_view key) {
  if (auto whole = rename_prefix(key, kUNetWholeNames, true)) return *whole;
  static const std::regex down(R"(^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$)"),
      down_sample(R"(^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$)"),
      mid(R"(^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$)"),
      up(R"(^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$)"),
      up_sample(R"(^up_blocks\.(\d+)\.upsamplers\.0\.(conv\..+)$)");
  constexpr auto U = Component::UNet;
  const std::string k(key);
  std::smatch m;
  auto sub_key = [&](const std::string& kind, const std::string& rest) {
    return kind == "resnets" ? rename_or_throw(U, key, rest, kUNetResnetNames, true)
                             : attention_part(key, rest);
  };
  if (std::regex_match(k, m, down)) {
    const int level = to_int(m[1]), j = to_int(m[3]);
    const bool attention = m[2] == "attentions";
    if (level >= kLevels || j >= kDownLayers || (attention && level == kLevels - 1)) unknown_key(U, key);
    return "input_blocks." + std::to_string(3 * level + j + 1) + (attention ? ".1." : ".0.") +
           sub_key(m[2], m[4]);
  }
  if (std::regex_match(k, m, down_sample)) {
    const int level = to_int(m[1]);
    if (level >= kLevels - 1) unknown_key(U, key);
    return "input_blocks." + std::to_string(3 * (level + 1)) + ".0.op." + std::string(m[2]);
  }
  if (std::regex_match(k, m, mid)) {
    const int j = to_int(m[2]);
    if (m[1] == "resnets" && j < 2)
      return "middle_block." + std::to_string(2 * j) + "." + sub_key(m[1], m[3]);
    if (m[1] == "attentions" && j == 0) return "middle_block.1." + sub_key(m[1], m[3]);
    unknown_key(U, key);
  }
  if (std::regex_match(k, m, up)) {
    const int level = to_int(m[1]), j = to_int(m[3]);
    const bool attention = m[2] == "attentions";
    if (level >= kLevels || j >= kUpLayers || (attention && level == 0)) unknown_key(U, key);
    return "output_blocks." + std::to_string(3 * level + j) + (attention ? ".1." : ".0.") +
           sub_key(m[2], m[4]);
  }
  // Up level 0 has no attention, so its upsampler is layer 1 of the output block; the others' is layer 2.
  if (std::regex_match(k, m, up_sample)) {
    const int level = to_int(m[1]);
    if (level >= kLevels - 1) unknown_key(U, key);
    return "output_blocks." + std::to_string(3 * level + 2) + (level == 0 ? ".1." : ".2.") +
           std::string(m[2]);
  }
  unknown_key(U, key);
}

std::string vae_to_diffusers(std::string_view full, std::string_view key) {
  static const std::regex down_block(R"(^encoder\.down\.(\d+)\.block\.(\d+)\.(.+)$)"),
      up_block(R"(^decoder\.up\.(\d+)\.block\.(\d+)\.(.+)$)"),
      down_sample(R"(^encoder\.down\.(\d+)\.downsample\.(conv\..+)$)"),
      up_sample(R"(^decoder\.up\.(\d+)\.upsample\.(conv\..+)$)"),
      mid_res(R"(^(encoder|decoder)\.mid\.block_(\d+)\.(.+)$)"),
      mid_attn(R"(^(encoder|decoder)\.mid\.attn_1\.(.+)$)"),
      ends(R"(^(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(.+)$)"),
      quant(R"(^(quant_conv|post_quant_conv)\..+$)");
  constexpr auto V = Component::VAE;
  const std::string k(key);
  std::smatch m;
  if (std::regex_match(k, m, down_block)) {
    const int level = to_int(m[1]), j = to_int(m[2]);
    if (level >= kLevels || j >= kDownLayers) unknown_key(V, full);
    return "encoder.down_blocks." + std::to_string(level) + ".resnets." + std::to_string(j) + "." +
           rename_or_throw(V, full, m[3].str(), kVAEResnetNames, false);
  }
  // The decoder's levels are numbered from the lowest resolution in diffusers, from the highest in LDM.
  if (std::regex_match(k, m, up_block)) {
    const int level = to_int(m[1]), j = to_int(m[2]);
    if (level >= kLevels || j >= kUpLayers) unknown_key(V, full);
    return "decoder.up_blocks." + std::to_string(kLevels - 1 - level) + ".resnets." + std::to_string(j) +
           "." + rename_or_throw(V, full, m[3].str(), kVAEResnetNames, false);
  }
  if (std::regex_match(k, m, down_sample)) {
    const int level = to_int(m[1]);
    if (level >= kLevels - 1) unknown_key(V, full);
    return "encoder.down_blocks." + std::to_string(level) + ".downsamplers.0." + m[2].str();
  }
  if (std::regex_match(k, m, up_sample)) {
    const int level = to_int(m[1]);
    if (level < 1 || level >= kLevels) unknown_key(V, full);
    return "decoder.up_blocks." + std::to_string(kLevels - 1 - level) + ".upsamplers.0." + m[2].str();
  }
  if (std::regex_match(k, m, mid_res)) {
    const int n = to_int(m[2]);
    if (n != 1 && n != 2) unknown_key(V, full);
    return m[1].str() + ".mid_block.resnets." + std::to_string(n - 1) + "." +
           rename_or_throw(V, full, m[3].str(), kVAEResnetNames, false);
  }
  if (std::regex_match(k, m, mid_attn))
    return m[1].str() + ".mid_block.attentions.0." +
           rename_or_throw(V, full, m[2].str(), kVAEAttentionNames, false);
  if (std::regex_match(k, m, ends))
    return m[1].str() + "." + (m[2] == "norm_out" ? std::string("conv_norm_out") : m[2].str()) + "." +
           m[3].str();
  if (std::regex_match(k, m, quant)) return k;
  unknown_key(V, full);
}

std::string vae_to_ldm(std::string_view original_key) {
  static const std::regex down_block(R"(^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$)"),
      up_block(R"(^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$)"),
      down_sample(R"(^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(conv\..+)$)"),
      up_sample(R"(^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(conv\..+)$)"),
      mid_res(R"(^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$)"),
      mid_attn(R"(^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$)"),
      ends(R"(^(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(.+)$)"),
      quant(R"(^(quant_conv|post_quant_conv)\..+$)");
  constexpr auto V = Component::VAE;
  const std::string k = modern_diffusers_key(V, original_key);
  const std::string_view key = original_key;
  std::smatch m;
  if (std::regex_match(k, m, down_block)) {
    const int level = to_int(m[1]), j = to_int(m[2]);
    if (level >= kLevels || j >= kDownLayers) unknown_key(V, key);
    return "encoder.down." + std::to_string(level) + ".block." + std::to_string(j) + "." +
           rename_or_throw(V, key, m[3].str(), kVAEResnetNames, true);
  }
  if (std::regex_match(k, m, up_block)) {
    const int level = to_int(m[1]), j = to_int(m[2]);
    if (level >= kLevels || j >= kUpLayers) unknown_key(V, key);
    return "decoder.up." + std::to_string(kLevels - 1 - level) + ".block." + std::to_string(j) + "." +
           rename_or_throw(V, key, m[3].str(), kVAEResnetNames, true);
  }
  if (std::regex_match(k, m, down_sample)) {
    const int level = to_int(m[1]);
    if (level >= kLevels - 1) unknown_key(V, key);
    return "encoder.down." + std::to_string(level) + ".downsample." + m[2].str();
  }
  if (std::regex_match(k, m, up_sample)) {
    const int level = to_int(m[1]);
    if (level >= kLevels - 1) unknown_key(V, key);
    return "decoder.up." + std::to_string(kLevels - 1 - level) + ".upsample." + m[2].str();
  }
  if (std::regex_match(k, m, mid_res)) {
    const int j = to_int(m[2]);
    if (j >= 2) unknown_key(V, key);
    return m[1].str() + ".mid.block_" + std::to_string(j + 1) + "." +
           rename_or_throw(V, key, m[3].str(), kVAEResnetNames, true);
  }
  if (std::regex_match(k, m, mid_attn))
    return m[1].str() + ".mid.attn_1." + rename_or_throw(V, key, m[2].str(), kVAEAttentionNames, true);
  if (std::regex_match(k, m, ends))
    return m[1].str() + "." + (m[2] == "conv_norm_out" ? std::string("norm_out") : m[2].str()) + "." +
           m[3].str();
  if (std::regex_match(k, m, quant)) return k;
  unknown_key(V, key);
}

std::string text_key(std::string_view full, std::string_view rest) {
  for (auto part : kTextParts)
    if (starts_with(rest, part) && rest.size() > part.size()) return "text_model." + std::string(rest);
  unknown_key(Component::TextEncoder, full);
}

}  // namespace

std::string_view component_name(Component c) {
  switch (c) {
    case Component::UNet:
      return "unet";
    case Component::TextEncoder:
      return "text_encoder";
    case Component::VAE:
      return "vae";
  }
  return "?";
}

std::string_view ldm_prefix(Component c) {
  switch (c) {
    case Component::UNet:
      return kLdmUNetPrefix;
    case Component::TextEncoder:
      return kLdmTextEncoderPrefix;
    case Component::VAE:
      return kLdmVAEPrefix;
  }
  return {};
}

std::optional<Component> ldm_component(std::string_view key) {
  for (auto c : {Component::UNet, Component::TextEncoder, Component::VAE})
    if (starts_with(key, ldm_prefix(c))) return c;
  return std::nullopt;
}

std::string ldm_to_diffusers(Component c, std::string_view ldm_key) {
  const auto prefix = ldm_prefix(c);
  if (!starts_with(ldm_key, prefix)) unknown_key(c, ldm_key);
  const auto key = ldm_key.substr(prefix.size());
  switch (c) {
    case Component::UNet:
      return unet_to_diffusers(ldm_key, key);
    case Component::VAE:
      return vae_to_diffusers(ldm_key, key);
    case Component::TextEncoder:
      // Very old files lack the "text_model." level (A1111's checkpoint_dict_replacements).
      return text_key(ldm_key, starts_with(key, "text_model.") ? key.substr(11) : key);
  }
  unknown_key(c, ldm_key);
}

std::string diffusers_to_ldm(Component c, std::string_view key) {
  switch (c) {
    case Component::UNet:
      return std::string(kLdmUNetPrefix) + unet_to_ldm(key);
    case Component::VAE:
      return std::string(kLdmVAEPrefix) + vae_to_ldm(key);
    case Component::TextEncoder:
      if (!starts_with(key, "text_model.")) unknown_key(c, key);
      return std::string(kLdmTextEncoderPrefix) + text_key(key, key.substr(11));
  }
  unknown_key(c, key);
}

std::string modern_diffusers_key(Component c, std::string_view key) {
  static const std::regex legacy(
      R"(^((encoder|decoder)\.mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.(.+)$)");
  if (c != Component::VAE) return std::string(key);
  const std::string k(key);
  std::smatch m;
  if (!std::regex_match(k, m, legacy)) return k;
  return m[1].str() + *rename_prefix(m[3].str() + "." + m[4].str(), kVAELegacyAttentionNames, false);
}

bool is_vae_attention_weight(Component c, std::string_view key) {
  static const std::regex weight(
      R"(^(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$)");
  return c == Component::VAE && std::regex_match(std::string(key), weight);
}

torch::Tensor ldm_tensor_to_diffusers(Component c, std::string_view key, const torch::Tensor& t) {
  // Anything but [C,C,1,1] is left alone so the loader reports it as mis-shaped, by name.
  if (is_vae_attention_weight(c, key) && t.dim() == 4 && t.size(2) == 1 && t.size(3) == 1)
    return t.reshape({t.size(0), t.size(1)});
  return t;
}

torch::Tensor diffusers_tensor_to_ldm(Component c, std::string_view key, const torch::Tensor& t) {
  if (is_vae_attention_weight(c, key) && t.dim() == 2) return t.reshape({t.size(0), t.size(1), 1, 1});
  return t;
}

}  // namespace kiln
