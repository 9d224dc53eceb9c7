#include "models/configs.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

template <typename T>
void read_if_present(const json& j, const char* key, T& field) {
  if (j.contains(key) && !j.at(key).is_null()) field = j.at(key).get<T>();
}

// diffusers accepts an int (same for every block) or a per-block list for head counts.
std::vector<int64_t> per_block(const json& value, size_t blocks) {
  if (value.is_array()) return value.get<std::vector<int64_t>>();
  return std::vector<int64_t>(blocks, value.get<int64_t>());
}

void require(bool ok, const std::string& source, const std::string& problem) {
  if (!ok) throw_file_error(source, problem);
}

bool is_set(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

// A config key kiln cannot honour: present, not null and not the SD 1.x value.
template <typename T>
void require_value(const json& j, const char* key, const T& sd1_value, const std::string& source,
                   const std::string& what) {
  if (is_set(j, key) && j.at(key).get<T>() != sd1_value)
    throw_file_error(
        source, std::string(key) + " = " + j.at(key).dump() + ": " + what + "; kiln supports SD 1.x only");
}

bool all_positive(const std::vector<int64_t>& v) {
  return !v.empty() && std::all_of(v.begin(), v.end(), [](int64_t x) { return x > 0; });
}

bool all_divisible(const std::vector<int64_t>& v, int64_t by) {
  return by > 0 && std::all_of(v.begin(), v.end(), [&](int64_t x) { return x % by == 0; });
}

}  // namespace

json read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw_file_error(path, "cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw_file_error(path, std::string("not valid JSON: ") + e.what());
  }
}

ModelConfigs sd15_configs() { return {}; }

ModelConfigs tiny_configs() {
  ModelConfigs c;
  c.unet.block_out_channels = {32, 64, 64, 64};
  c.unet.cross_attention_dim = 32;
  c.unet.sample_size = 16;
  c.text_encoder.hidden_size = 32;
  c.text_encoder.intermediate_size = 64;
  c.text_encoder.num_hidden_layers = 3;
  c.text_encoder.num_attention_heads = 4;
  c.vae.block_out_channels = {32, 64, 64, 64};
  c.vae.sample_size = 128;
  return c;
}

UNetConfig unet_config_from_json(const json& j, const std::string& source) {
  try {
    UNetConfig c;
    read_if_present(j, "in_channels", c.in_channels);
    read_if_present(j, "out_channels", c.out_channels);
    read_if_present(j, "block_out_channels", c.block_out_channels);
    read_if_present(j, "layers_per_block", c.layers_per_block);
    read_if_present(j, "cross_attention_dim", c.cross_attention_dim);
    read_if_present(j, "norm_num_groups", c.norm_num_groups);
    read_if_present(j, "norm_eps", c.norm_eps);
    read_if_present(j, "flip_sin_to_cos", c.flip_sin_to_cos);
    read_if_present(j, "freq_shift", c.freq_shift);
    read_if_present(j, "sample_size", c.sample_size);
    read_if_present(j, "use_linear_projection", c.use_linear_projection);
    const size_t blocks = c.block_out_channels.size();
    // num_attention_heads wins when set; SD 1.x configs put the head count in attention_head_dim.
    if (j.contains("num_attention_heads") && !j["num_attention_heads"].is_null())
      c.num_attention_heads = per_block(j["num_attention_heads"], blocks);
    else if (j.contains("attention_head_dim") && !j["attention_head_dim"].is_null())
      c.num_attention_heads = per_block(j["attention_head_dim"], blocks);
    else
      c.num_attention_heads.assign(blocks, 8);
    if (j.contains("down_block_types")) {
      c.down_block_has_attention.clear();
      for (const auto& t : j["down_block_types"]) {
        const auto name = t.get<std::string>();
        if (name != "CrossAttnDownBlock2D" && name != "DownBlock2D")
          throw_file_error(source, "down block type '" + name + "' is not an SD 1.x block");
        c.down_block_has_attention.push_back(name == "CrossAttnDownBlock2D");
      }
    }
    if (j.contains("up_block_types")) {
      c.up_block_has_attention.clear();
      for (const auto& t : j["up_block_types"]) {
        const auto name = t.get<std::string>();
        if (name != "CrossAttnUpBlock2D" && name != "UpBlock2D")
          throw_file_error(source, "up block type '" + name + "' is not an SD 1.x block");
        c.up_block_has_attention.push_back(name == "CrossAttnUpBlock2D");
      }
    }
    if (c.use_linear_projection)
      throw_file_error(source, "use_linear_projection=true is an SD 2.x UNet; kiln supports SD 1.x");
    if (c.down_block_has_attention.size() != blocks || c.up_block_has_attention.size() != blocks ||
        c.num_attention_heads.size() != blocks)
      throw_file_error(source, "block_out_channels, down/up_block_types and head counts disagree in length");
    if (j.contains("addition_embed_type") && !j["addition_embed_type"].is_null())
      throw_file_error(source, "addition_embed_type is set: an SDXL-style UNet, not SD 1.x");
    // Options that change the network away from SD 1.x's (diffusers UNet2DConditionModel arguments).
    if (is_set(j, "transformer_layers_per_block")) {
      const auto& t = j["transformer_layers_per_block"];
      const bool one =
          t.is_array() ? std::all_of(t.begin(), t.end(), [](const json& x) { return x == 1; }) : t == 1;
      require(one, source,
              "transformer_layers_per_block = " + t.dump() + " (SDXL-style); kiln supports SD 1.x only");
    }
    for (const char* key : {"class_embed_type", "num_class_embeds", "time_cond_proj_dim", "encoder_hid_dim",
                            "encoder_hid_dim_type", "time_embedding_dim"})
      require(!is_set(j, key), source, std::string(key) + " is set; kiln supports SD 1.x UNets only");
    if (is_set(j, "only_cross_attention")) {
      const auto& t = j["only_cross_attention"];
      const bool any =
          t.is_array() ? std::any_of(t.begin(), t.end(), [](const json& x) { return x == true; }) : t == true;
      require(!any, source, "only_cross_attention is set; kiln supports SD 1.x UNets only");
    }
    require_value(j, "dual_cross_attention", false, source, "dual cross attention");
    require_value(j, "center_input_sample", false, source, "input centring");
    require_value(j, "act_fn", std::string("silu"), source, "activation");
    require_value(j, "resnet_time_scale_shift", std::string("default"), source,
                  "scale-shift time conditioning");
    require_value(j, "mid_block_type", std::string("UNetMidBlock2DCrossAttn"), source, "mid block type");
    require_value(j, "time_embedding_type", std::string("positional"), source, "time embedding");
    require_value(j, "attention_type", std::string("default"), source, "attention type");
    require_value(j, "conv_in_kernel", int64_t{3}, source, "conv_in kernel");
    require_value(j, "conv_out_kernel", int64_t{3}, source, "conv_out kernel");
    require(all_positive(c.block_out_channels) && c.in_channels > 0 && c.out_channels > 0 &&
                c.layers_per_block > 0 && c.cross_attention_dim > 0,
            source, "channel counts and layers_per_block must be positive");
    require(all_positive(c.num_attention_heads), source, "head counts must be positive");
    require(all_divisible(c.block_out_channels, c.norm_num_groups), source,
            "block_out_channels must be multiples of norm_num_groups");
    for (size_t i = 0; i < blocks; ++i)
      require(c.block_out_channels[i] % c.num_attention_heads[i] == 0, source,
              "block_out_channels[" + std::to_string(i) + "] is not a multiple of its head count");
    return c;
  } catch (const json::exception& e) {
    throw_file_error(source, std::string("bad UNet config: ") + e.what());
  }
}

CLIPTextConfig clip_text_config_from_json(const json& j, const std::string& source) {
  try {
    CLIPTextConfig c;
    read_if_present(j, "vocab_size", c.vocab_size);
    read_if_present(j, "hidden_size", c.hidden_size);
    read_if_present(j, "intermediate_size", c.intermediate_size);
    read_if_present(j, "num_hidden_layers", c.num_hidden_layers);
    read_if_present(j, "num_attention_heads", c.num_attention_heads);
    read_if_present(j, "max_position_embeddings", c.max_position_embeddings);
    read_if_present(j, "hidden_act", c.hidden_act);
    read_if_present(j, "layer_norm_eps", c.layer_norm_eps);
    read_if_present(j, "bos_token_id", c.bos_token_id);
    read_if_present(j, "eos_token_id", c.eos_token_id);
    read_if_present(j, "pad_token_id", c.pad_token_id);
    if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu")
      throw_file_error(source, "hidden_act '" + c.hidden_act + "' is not supported (quick_gelu or gelu)");
    require(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_hidden_layers > 0 &&
                c.num_attention_heads > 0 && c.max_position_embeddings > 0,
            source, "sizes, layer and head counts must be positive");
    if (c.hidden_size % c.num_attention_heads != 0)
      throw_file_error(source, "hidden_size is not a multiple of num_attention_heads");
    return c;
  } catch (const json::exception& e) {
    throw_file_error(source, std::string("bad text encoder config: ") + e.what());
  }
}

VAEConfig vae_config_from_json(const json& j, const std::string& source) {
  try {
    VAEConfig c;
    read_if_present(j, "in_channels", c.in_channels);
    read_if_present(j, "out_channels", c.out_channels);
    read_if_present(j, "latent_channels", c.latent_channels);
    read_if_present(j, "block_out_channels", c.block_out_channels);
    read_if_present(j, "layers_per_block", c.layers_per_block);
    read_if_present(j, "norm_num_groups", c.norm_num_groups);
    read_if_present(j, "sample_size", c.sample_size);
    read_if_present(j, "scaling_factor", c.scaling_factor);
    const size_t blocks = c.block_out_channels.size();
    for (const auto& [key, type] : {std::pair{"down_block_types", "DownEncoderBlock2D"},
                                    std::pair{"up_block_types", "UpDecoderBlock2D"}}) {
      if (!is_set(j, key)) continue;
      const auto types = j[key].get<std::vector<std::string>>();
      require(types.size() == blocks, source,
              std::string(key) + " and block_out_channels disagree in length");
      for (const auto& t : types)
        require(t == type, source, std::string(key) + " has '" + t + "', not an SD 1.x VAE block");
    }
    require_value(j, "act_fn", std::string("silu"), source, "activation");
    require_value(j, "use_quant_conv", true, source, "VAE without quant_conv");
    require_value(j, "use_post_quant_conv", true, source, "VAE without post_quant_conv");
    require_value(j, "mid_block_add_attention", true, source, "VAE without mid-block attention");
    require(!is_set(j, "shift_factor") || j["shift_factor"] == 0, source,
            "shift_factor is set (an SD3/Flux-style VAE); kiln supports SD 1.x only");
    require(all_positive(c.block_out_channels) && c.in_channels > 0 && c.out_channels > 0 &&
                c.latent_channels > 0 && c.layers_per_block > 0,
            source, "channel counts and layers_per_block must be positive");
    require(all_divisible(c.block_out_channels, c.norm_num_groups), source,
            "block_out_channels must be multiples of norm_num_groups");
    require(c.scaling_factor > 0, source, "scaling_factor must be positive");
    return c;
  } catch (const json::exception& e) {
    throw_file_error(source, std::string("bad VAE config: ") + e.what());
  }
}

json to_json(const UNetConfig& c) {
  json down = json::array(), up = json::array();
  for (bool a : c.down_block_has_attention) down.push_back(a ? "CrossAttnDownBlock2D" : "DownBlock2D");
  for (bool a : c.up_block_has_attention) up.push_back(a ? "CrossAttnUpBlock2D" : "UpBlock2D");
  const bool same_heads = std::all_of(c.num_attention_heads.begin(), c.num_attention_heads.end(),
                                      [&](int64_t h) { return h == c.num_attention_heads.front(); });
  json heads = same_heads ? json(c.num_attention_heads.front()) : json(c.num_attention_heads);
  return {{"_class_name", "UNet2DConditionModel"},
          {"_diffusers_version", "0.30.3"},
          {"act_fn", "silu"},
          {"attention_head_dim", heads},
          {"block_out_channels", c.block_out_channels},
          {"center_input_sample", false},
          {"cross_attention_dim", c.cross_attention_dim},
          {"down_block_types", down},
          {"downsample_padding", 1},
          {"flip_sin_to_cos", c.flip_sin_to_cos},
          {"freq_shift", c.freq_shift},
          {"in_channels", c.in_channels},
          {"layers_per_block", c.layers_per_block},
          {"mid_block_scale_factor", 1},
          {"norm_eps", c.norm_eps},
          {"norm_num_groups", c.norm_num_groups},
          {"out_channels", c.out_channels},
          {"sample_size", c.sample_size},
          {"up_block_types", up},
          {"use_linear_projection", c.use_linear_projection}};
}

json to_json(const CLIPTextConfig& c) {
  return {{"architectures", {"CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"attention_dropout", 0.0},
          {"dropout", 0.0},
          {"bos_token_id", c.bos_token_id},
          {"eos_token_id", c.eos_token_id},
          {"pad_token_id", c.pad_token_id},
          {"hidden_act", c.hidden_act},
          {"hidden_size", c.hidden_size},
          {"initializer_factor", 1.0},
          {"initializer_range", 0.02},
          {"intermediate_size", c.intermediate_size},
          {"layer_norm_eps", c.layer_norm_eps},
          {"max_position_embeddings", c.max_position_embeddings},
          {"num_attention_heads", c.num_attention_heads},
          {"num_hidden_layers", c.num_hidden_layers},
          {"projection_dim", 768},
          {"torch_dtype", "float32"},
          {"vocab_size", c.vocab_size}};
}

json to_json(const VAEConfig& c) {
  const size_t blocks = c.block_out_channels.size();
  return {{"_class_name", "AutoencoderKL"},
          {"_diffusers_version", "0.30.3"},
          {"act_fn", "silu"},
          {"block_out_channels", c.block_out_channels},
          {"down_block_types", std::vector<std::string>(blocks, "DownEncoderBlock2D")},
          {"up_block_types", std::vector<std::string>(blocks, "UpDecoderBlock2D")},
          {"in_channels", c.in_channels},
          {"out_channels", c.out_channels},
          {"latent_channels", c.latent_channels},
          {"layers_per_block", c.layers_per_block},
          {"norm_num_groups", c.norm_num_groups},
          {"sample_size", c.sample_size},
          {"scaling_factor", c.scaling_factor}};
}

ModelConfigs read_model_configs(const fs::path& path, ModelConfigs base) {
  auto read_component = [&](const fs::path& file) {
    const json j = read_json_file(file);
    if (!j.is_object()) throw_file_error(file, "config is not a JSON object");
    const std::string cls = j.value("_class_name", "");
    const bool is_clip = j.contains("architectures") || j.value("model_type", "") == "clip_text_model";
    if (cls == "UNet2DConditionModel")
      base.unet = unet_config_from_json(j, file.string());
    else if (cls == "AutoencoderKL")
      base.vae = vae_config_from_json(j, file.string());
    else if (is_clip)
      base.text_encoder = clip_text_config_from_json(j, file.string());
    else
      throw_file_error(file, "not a UNet, VAE or CLIP text encoder config (class '" + cls + "')");
  };
  if (!fs::exists(path)) throw_file_error(path, "config path does not exist");
  if (fs::is_regular_file(path)) {
    read_component(path);
    return base;
  }
  bool found = false;
  for (const char* part : {"unet", "text_encoder", "vae"}) {
    const fs::path file = path / part / "config.json";
    if (fs::exists(file)) {
      read_component(file);
      found = true;
    }
  }
  if (fs::exists(path / "config.json")) {
    read_component(path / "config.json");
    found = true;
  }
  if (!found) throw_file_error(path, "no unet/, text_encoder/ or vae/ config.json found in this folder");
  return base;
}

}  // namespace kiln
