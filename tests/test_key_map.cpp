// LDM <-> diffusers key mapping against the golden key maps (tiny-sd and full-size SD 1.5).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "io/key_map.h"
#include "util/error.h"

namespace kiln {
namespace {

using nlohmann::json;

json read_json(const std::string& relative) {
  std::ifstream in(std::string(KILN_GOLDEN_DIR) + "/" + relative);
  EXPECT_TRUE(in) << relative;
  return json::parse(in);
}

Component component_of_file(const std::string& file) {
  if (file.rfind("unet/", 0) == 0) return Component::UNet;
  if (file.rfind("vae/", 0) == 0) return Component::VAE;
  EXPECT_EQ(file.rfind("text_encoder/", 0), 0u) << file;
  return Component::TextEncoder;
}

std::vector<int64_t> shape_of(const json& j) { return j.get<std::vector<int64_t>>(); }

// Maps one (LDM, diffusers) pair both ways, and the tensor shape transform both ways.
void expect_pair(Component c, const std::string& ldm, const std::vector<int64_t>& ldm_shape,
                 const std::string& diffusers, const std::vector<int64_t>& diffusers_shape) {
  ASSERT_EQ(ldm_component(ldm), c) << ldm;
  EXPECT_EQ(ldm_to_diffusers(c, ldm), diffusers) << ldm;
  EXPECT_EQ(diffusers_to_ldm(c, diffusers), ldm) << diffusers;
  EXPECT_EQ(is_vae_attention_weight(c, diffusers), ldm_shape.size() != diffusers_shape.size()) << diffusers;
  const auto ldm_tensor = torch::empty(ldm_shape);  // contents unused: empty() never touches the memory
  const auto diffusers_tensor = torch::empty(diffusers_shape);
  EXPECT_EQ(ldm_tensor_to_diffusers(c, diffusers, ldm_tensor).sizes(), diffusers_tensor.sizes()) << ldm;
  EXPECT_EQ(diffusers_tensor_to_ldm(c, diffusers, diffusers_tensor).sizes(), ldm_tensor.sizes()) << diffusers;
}

TEST(KeyMap, TinySdKeymapMapsBothWays) {
  const json keymap = read_json("tiny-sd/keymap.json");
  int mapped = 0, reshaped = 0;
  std::map<Component, int> per_component;
  for (const auto& e : keymap.at("tensors")) {
    const auto ldm = e.at("ldm_name").get<std::string>();
    if (e.at("diffusers_name").is_null()) {
      EXPECT_EQ(ldm, kLdmPositionIdsKey);  // the only LDM tensor without a diffusers counterpart
      continue;
    }
    const Component c = component_of_file(e.at("diffusers_file").get<std::string>());
    expect_pair(c, ldm, shape_of(e.at("ldm_shape")), e.at("diffusers_name").get<std::string>(),
                shape_of(e.at("diffusers_shape")));
    ++mapped;
    ++per_component[c];
    reshaped += e.at("transform").get<std::string>() != "identity";
  }
  EXPECT_EQ(mapped, 980);
  EXPECT_EQ(per_component[Component::UNet], 684);
  EXPECT_EQ(per_component[Component::TextEncoder], 52);
  EXPECT_EQ(per_component[Component::VAE], 244);
  EXPECT_EQ(reshaped, 8);
}

TEST(KeyMap, FullSd15ManifestMapsBothWays) {
  const json manifest = read_json("manifests/sd15-diffusers-keys.json");
  std::set<std::string> ldm_names;
  for (const auto& e : manifest.at("tensors")) {
    const Component c = component_of_file(e.at("file").get<std::string>());
    const auto ldm = e.at("ldm_name").get<std::string>();
    expect_pair(c, ldm, shape_of(e.at("ldm_shape")), e.at("name").get<std::string>(),
                shape_of(e.at("shape")));
    ldm_names.insert(ldm);
  }
  EXPECT_EQ(ldm_names.size(), 1130u);
  // The LDM manifest holds exactly these names plus position_ids.
  const json ldm_manifest = read_json("manifests/sd15-ldm-keys.json");
  std::set<std::string> listed;
  for (const auto& e : ldm_manifest.at("tensors")) listed.insert(e.at("name").get<std::string>());
  ldm_names.insert(std::string(kLdmPositionIdsKey));
  EXPECT_EQ(listed, ldm_names);
}

TEST(KeyMap, ComponentsAndPrefixes) {
  EXPECT_EQ(ldm_component("model.diffusion_model.out.2.bias"), Component::UNet);
  EXPECT_EQ(ldm_component("first_stage_model.quant_conv.weight"), Component::VAE);
  EXPECT_EQ(ldm_component("cond_stage_model.transformer.text_model.final_layer_norm.weight"),
            Component::TextEncoder);
  EXPECT_EQ(ldm_component("alphas_cumprod"), std::nullopt);
  EXPECT_EQ(ldm_component("model_ema.diffusion_modelinput_blocks00weight"), std::nullopt);
  EXPECT_EQ(ldm_component("cond_stage_model.model.token_embedding.weight"), std::nullopt);  // SD 2.x OpenCLIP
  EXPECT_EQ(component_name(Component::TextEncoder), "text_encoder");
}

TEST(KeyMap, VeryOldTextEncoderKeysGainTextModel) {
  const auto c = Component::TextEncoder;
  EXPECT_EQ(ldm_to_diffusers(c, "cond_stage_model.transformer.embeddings.token_embedding.weight"),
            "text_model.embeddings.token_embedding.weight");
  EXPECT_EQ(ldm_to_diffusers(c, "cond_stage_model.transformer.encoder.layers.11.mlp.fc2.bias"),
            "text_model.encoder.layers.11.mlp.fc2.bias");
  EXPECT_EQ(ldm_to_diffusers(c, "cond_stage_model.transformer.final_layer_norm.weight"),
            "text_model.final_layer_norm.weight");
  // Written back in the current form.
  EXPECT_EQ(diffusers_to_ldm(c, "text_model.final_layer_norm.weight"),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight");
}

TEST(KeyMap, OlderDiffusersVaeAttentionNames) {
  const auto c = Component::VAE;
  const std::pair<const char*, const char*> cases[] = {
      {"encoder.mid_block.attentions.0.query.weight", "encoder.mid_block.attentions.0.to_q.weight"},
      {"encoder.mid_block.attentions.0.key.bias", "encoder.mid_block.attentions.0.to_k.bias"},
      {"decoder.mid_block.attentions.0.value.weight", "decoder.mid_block.attentions.0.to_v.weight"},
      {"decoder.mid_block.attentions.0.proj_attn.weight", "decoder.mid_block.attentions.0.to_out.0.weight"},
      {"decoder.mid_block.attentions.0.group_norm.weight",
       "decoder.mid_block.attentions.0.group_norm.weight"},
  };
  for (const auto& [old_name, current] : cases) {
    EXPECT_EQ(modern_diffusers_key(c, old_name), current);
    EXPECT_EQ(diffusers_to_ldm(c, old_name), diffusers_to_ldm(c, current));
  }
  EXPECT_EQ(diffusers_to_ldm(c, "decoder.mid_block.attentions.0.proj_attn.weight"),
            "first_stage_model.decoder.mid.attn_1.proj_out.weight");
  // Only VAE mid-block attention keys are renamed.
  EXPECT_EQ(modern_diffusers_key(c, "encoder.conv_in.weight"), "encoder.conv_in.weight");
  EXPECT_EQ(modern_diffusers_key(Component::UNet, "mid_block.attentions.0.key.weight"),
            "mid_block.attentions.0.key.weight");
}

TEST(KeyMap, AttentionReshapeKeepsValues) {
  const auto c = Component::VAE;
  const std::string key = "decoder.mid_block.attentions.0.to_k.weight";
  const auto conv = torch::arange(12, torch::kFloat32).reshape({3, 4, 1, 1});
  const auto linear = ldm_tensor_to_diffusers(c, key, conv);
  ASSERT_EQ(linear.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(torch::equal(linear, conv.reshape({3, 4})));
  EXPECT_TRUE(torch::equal(diffusers_tensor_to_ldm(c, key, linear), conv));
  // Biases and other weights pass through; a non-1x1 tensor is left for the loader to report.
  const auto bias = torch::ones({3});
  EXPECT_TRUE(ldm_tensor_to_diffusers(c, "decoder.mid_block.attentions.0.to_k.bias", bias).is_same(bias));
  const auto odd = torch::ones({3, 4, 3, 3});
  EXPECT_EQ(ldm_tensor_to_diffusers(c, key, odd).sizes(), odd.sizes());
  const auto unet_proj = torch::ones({3, 3, 1, 1});
  EXPECT_EQ(
      ldm_tensor_to_diffusers(Component::UNet, "mid_block.attentions.0.proj_in.weight", unet_proj).sizes(),
      unet_proj.sizes());
}

TEST(KeyMap, RejectsKeysOutsideSd1Structure) {
  const std::pair<Component, const char*> bad_ldm[] = {
      {Component::UNet, "model.diffusion_model.input_blocks.12.0.in_layers.0.weight"},
      {Component::UNet, "model.diffusion_model.input_blocks.0.1.weight"},
      {Component::UNet, "model.diffusion_model.input_blocks.3.1.op.weight"},
      {Component::UNet, "model.diffusion_model.input_blocks.10.1.proj_in.weight"},  // no attention at level 3
      {Component::UNet, "model.diffusion_model.input_blocks.1.0.in_layers.1.weight"},
      {Component::UNet, "model.diffusion_model.input_blocks.1.2.proj_in.weight"},
      {Component::UNet, "model.diffusion_model.input_blocks.1.1.unknown.weight"},
      {Component::UNet, "model.diffusion_model.middle_block.3.in_layers.0.weight"},
      {Component::UNet,
       "model.diffusion_model.output_blocks.2.2.conv.weight"},  // level 0 upsampler is layer 1
      {Component::UNet, "model.diffusion_model.output_blocks.0.1.proj_in.weight"},
      {Component::UNet, "model.diffusion_model.output_blocks.11.2.conv.weight"},
      {Component::UNet, "model.diffusion_model.output_blocks.12.0.in_layers.0.weight"},
      {Component::UNet, "model.diffusion_model.label_emb.0.0.weight"},  // SDXL
      {Component::UNet, "first_stage_model.encoder.conv_in.weight"},    // wrong component
      {Component::VAE, "first_stage_model.encoder.down.0.block.2.conv1.weight"},
      {Component::VAE, "first_stage_model.decoder.up.0.block.3.conv1.weight"},
      {Component::VAE, "first_stage_model.encoder.down.3.downsample.conv.weight"},
      {Component::VAE, "first_stage_model.decoder.up.0.upsample.conv.weight"},
      {Component::VAE, "first_stage_model.encoder.up.0.block.0.conv1.weight"},
      {Component::VAE, "first_stage_model.encoder.mid.block_3.conv1.weight"},
      {Component::VAE, "first_stage_model.encoder.mid.attn_1.query.weight"},
      {Component::VAE, "first_stage_model.encoder.down.0.block.0.skip_connection.weight"},
      {Component::TextEncoder, "cond_stage_model.transformer.text_model.pooler.weight"},
      {Component::TextEncoder, "cond_stage_model.transformer.logit_scale"},
  };
  for (const auto& [c, key] : bad_ldm) EXPECT_THROW(ldm_to_diffusers(c, key), Error) << key;
  const std::pair<Component, const char*> bad_diffusers[] = {
      {Component::UNet, "down_blocks.4.resnets.0.norm1.weight"},
      {Component::UNet, "down_blocks.0.resnets.2.norm1.weight"},
      {Component::UNet, "down_blocks.3.attentions.0.proj_in.weight"},
      {Component::UNet, "down_blocks.3.downsamplers.0.conv.weight"},
      {Component::UNet, "up_blocks.0.attentions.0.proj_in.weight"},
      {Component::UNet, "up_blocks.1.resnets.3.norm1.weight"},
      {Component::UNet, "up_blocks.3.upsamplers.0.conv.weight"},
      {Component::UNet, "mid_block.resnets.2.norm1.weight"},
      {Component::UNet, "mid_block.attentions.1.proj_in.weight"},
      {Component::UNet, "down_blocks.0.resnets.0.in_layers.0.weight"},
      {Component::UNet, "add_embedding.linear_1.weight"},
      {Component::VAE, "encoder.down_blocks.3.downsamplers.0.conv.weight"},
      {Component::VAE, "decoder.up_blocks.3.upsamplers.0.conv.weight"},
      {Component::VAE, "decoder.up_blocks.0.resnets.3.conv1.weight"},
      {Component::VAE, "encoder.mid_block.attentions.0.to_out.1.weight"},
      {Component::TextEncoder, "embeddings.token_embedding.weight"},
      {Component::TextEncoder, "text_model.head.weight"},
  };
  for (const auto& [c, key] : bad_diffusers) EXPECT_THROW(diffusers_to_ldm(c, key), Error) << key;
}

}  // namespace
}  // namespace kiln
