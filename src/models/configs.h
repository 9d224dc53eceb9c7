// Architecture configs of the three SD 1.x networks, as plain structs with SD 1.5 defaults.
// Field names follow the diffusers/transformers config.json keys they are read from.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace kiln {

// diffusers UNet2DConditionModel, SD 1.x subset (1x1-conv projections, GEGLU, no class embedding).
struct UNetConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  // true = CrossAttnDownBlock2D / CrossAttnUpBlock2D; the up list is in diffusers order.
  std::vector<bool> down_block_has_attention = {true, true, true, false};
  std::vector<bool> up_block_has_attention = {false, true, true, true};
  int64_t layers_per_block = 2;
  int64_t cross_attention_dim = 768;
  // Number of heads per transformer, per block ("attention_head_dim" in SD 1.x configs is the
  // head count: a legacy misnomer diffusers keeps for compatibility).
  std::vector<int64_t> num_attention_heads = {8, 8, 8, 8};
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool flip_sin_to_cos = true;
  int64_t freq_shift = 0;
  int64_t sample_size = 64;            // latent side the model was trained at (512 px / 8)
  bool use_linear_projection = false;  // SD 2.x style; rejected by kiln's SD 1.x UNet

  bool operator==(const UNetConfig&) const = default;
};

// transformers CLIPTextModel (CLIP ViT-L/14 text tower for SD 1.x).
struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  int64_t bos_token_id = 49406;
  int64_t eos_token_id = 49407;
  int64_t pad_token_id = 1;

  bool operator==(const CLIPTextConfig&) const = default;
};

// diffusers AutoencoderKL (the SD 1.x VAE, "kl-f8").
struct VAEConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels = {128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 512;
  // Latents are multiplied by this after encoding and divided by it before decoding.
  double scaling_factor = 0.18215;

  bool operator==(const VAEConfig&) const = default;
};

inline constexpr double kSD1LatentScale = 0.18215;

struct ModelConfigs {
  UNetConfig unet;
  CLIPTextConfig text_encoder;
  VAEConfig vae;

  bool operator==(const ModelConfigs&) const = default;
};

// The tiny architecture of the golden reference model (tests, benchmarks, demos).
ModelConfigs tiny_configs();
ModelConfigs sd15_configs();

// config.json <-> structs. Unknown keys are ignored; values kiln cannot run (e.g. SD 2.x's
// use_linear_projection, non-SD block types) throw kiln::Error naming `source`.
UNetConfig unet_config_from_json(const nlohmann::json& j, const std::string& source);
CLIPTextConfig clip_text_config_from_json(const nlohmann::json& j, const std::string& source);
VAEConfig vae_config_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json to_json(const UNetConfig& c);
nlohmann::json to_json(const CLIPTextConfig& c);
nlohmann::json to_json(const VAEConfig& c);

// Parses a JSON file; a missing file or bad JSON throws kiln::Error naming `path`.
nlohmann::json read_json_file(const std::filesystem::path& path);

// Reads `--config PATH`: a diffusers model folder (with unet/, text_encoder/, vae/ config.json)
// or a single component config.json (whose class name decides the component). Components not
// found keep the values in `base`.
ModelConfigs read_model_configs(const std::filesystem::path& path, ModelConfigs base = {});

}  // namespace kiln
