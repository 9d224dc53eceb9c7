#include "io/checkpoint.h"

#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "text/clip_tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr Component kComponents[] = {Component::UNet, Component::TextEncoder, Component::VAE};

// File names inside a diffusers folder (the text encoder keeps transformers' name).
fs::path diffusers_weights(Component c) {
  return fs::path(component_name(c)) /
         (c == Component::TextEncoder ? "model.safetensors" : "diffusion_pytorch_model.safetensors");
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

bool any_key(const SafeTensorsFile& file, std::string_view prefix) {
  for (const auto& e : file.entries())
    if (starts_with(e.name, prefix)) return true;
  return false;
}

// Names the architecture of a file that is not SD 1.x, from keys only SD 2.x or SDXL have.
void reject_other_architectures(const SafeTensorsFile& file) {
  if (any_key(file, "conditioner.embedders.") || any_key(file, "model.diffusion_model.label_emb."))
    throw_file_error(file.path(), "this is an SDXL checkpoint (conditioner.embedders / label_emb keys); kiln supports SD 1.x");
  if (any_key(file, "cond_stage_model.model."))
    throw_file_error(file.path(),
                     "this is an SD 2.x checkpoint (OpenCLIP text encoder cond_stage_model.model.*); kiln supports SD 1.x");
  if (const auto* proj = file.find("model.diffusion_model.input_blocks.1.1.proj_in.weight"); proj && proj->shape.size() == 2)
    throw_file_error(file.path(), "this is an SD 2.x UNet (linear proj_in); kiln supports SD 1.x");
  if (const auto* k = file.find("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight");
      k && k->shape.size() == 2 && k->shape[1] == 1024)
    throw_file_error(file.path(), "this is an SD 2.x UNet (1024-wide text context); kiln supports SD 1.x");
}

Checkpoint read_ldm(const fs::path& path) {
  const auto file = SafeTensorsFile::open(path);
  reject_other_architectures(file);
  Checkpoint ckpt;
  ckpt.source = path;
  ckpt.layout = CheckpointLayout::Ldm;
  ckpt.metadata = file.metadata();
  for (const auto& entry : file.entries()) {
    auto tensor = file.tensor(entry.name);
    if (entry.name == kLdmPositionIdsKey) continue;  // regenerated on write; not a weight
    const auto component = ldm_component(entry.name);
    if (!component) {
      ckpt.extra[entry.name] = tensor;
      continue;
    }
    std::string key;
    try {
      key = ldm_to_diffusers(*component, entry.name);
    } catch (const Error& e) {
      throw_file_error(path, e.what());
    }
    auto& dict = ckpt.component(*component);
    if (!dict.emplace(key, ldm_tensor_to_diffusers(*component, key, tensor)).second)
      throw_file_error(path, "two tensors map to the same diffusers name '" + key + "'");
  }
  if (ckpt.unet.empty() && ckpt.text_encoder.empty() && ckpt.vae.empty())
    throw_file_error(path, "no SD 1.x tensors found (expected model.diffusion_model.*, "
                           "cond_stage_model.transformer.*, first_stage_model.*)");
  return ckpt;
}


Checkpoint read_diffusers(const fs::path& dir) {
  if (fs::exists(dir / "text_encoder_2") || fs::exists(dir / "unet" / "config.json")) {
    if (fs::exists(dir / "text_encoder_2"))
      throw_file_error(dir, "this is an SDXL diffusers folder (text_encoder_2); kiln supports SD 1.x");
  }
  Checkpoint ckpt;
  ckpt.source = dir;
  ckpt.layout = CheckpointLayout::Diffusers;
  ckpt.configs = read_model_configs(dir);
  for (auto c : kComponents) {
    const fs::path weights = dir / diffusers_weights(c);
    if (!fs::exists(weights)) {
      if (fs::exists(weights.parent_path() / "diffusion_pytorch_model.bin") ||
          fs::exists(weights.parent_path() / "pytorch_model.bin"))
        throw_file_error(weights.parent_path(), "holds pickled .bin weights only; kiln reads safetensors");
      continue;
    }
    const auto file = SafeTensorsFile::open(weights);
    if (c == Component::UNet) ckpt.metadata = file.metadata();
    auto& dict = ckpt.component(c);
    for (const auto& entry : file.entries()) {
      if (c == Component::TextEncoder && entry.name == "text_model.embeddings.position_ids") continue;
      dict[modern_diffusers_key(c, entry.name)] = file.tensor(entry.name);
    }
  }
  if (ckpt.unet.empty() && ckpt.text_encoder.empty() && ckpt.vae.empty())
    throw_file_error(dir, "diffusers folder without unet/, text_encoder/ or vae/ safetensors weights");
  return ckpt;
}

bool same_widths(const ModelConfigs& a, const ModelConfigs& b) {
  return a.unet.block_out_channels == b.unet.block_out_channels &&
         a.unet.cross_attention_dim == b.unet.cross_attention_dim &&
         a.unet.layers_per_block == b.unet.layers_per_block &&
         a.unet.down_block_has_attention == b.unet.down_block_has_attention &&
         a.unet.up_block_has_attention == b.unet.up_block_has_attention &&
         a.text_encoder.hidden_size == b.text_encoder.hidden_size &&
         a.text_encoder.num_hidden_layers == b.text_encoder.num_hidden_layers &&
         a.text_encoder.intermediate_size == b.text_encoder.intermediate_size &&
         a.vae.block_out_channels == b.vae.block_out_channels;
}

int64_t count_indices(const StateDict& dict, const std::string& prefix) {
  int64_t count = 0;
  while (true) {
    const std::string p = prefix + std::to_string(count) + ".";
    auto it = dict.lower_bound(p);
    if (it == dict.end() || !starts_with(it->first, p)) return count;
    ++count;
  }
}

int64_t dim_of(const StateDict& dict, const std::string& key, int64_t dim, const fs::path& source) {
  auto it = dict.find(key);
  if (it == dict.end()) throw_file_error(source, "cannot infer the architecture: tensor '" + key + "' is missing");
  if (it->second.dim() <= dim) throw_file_error(source, "tensor '" + key + "' has an unexpected shape");
  return it->second.size(dim);
}

json model_index_json() {
  return {{"_class_name", "StableDiffusionPipeline"},
          {"_diffusers_version", "0.30.3"},
          {"feature_extractor", {nullptr, nullptr}},
          {"requires_safety_checker", false},
          {"safety_checker", {nullptr, nullptr}},
          {"scheduler", {"diffusers", "PNDMScheduler"}},
          {"text_encoder", {"transformers", "CLIPTextModel"}},
          {"tokenizer", {"transformers", "CLIPTokenizer"}},
          {"unet", {"diffusers", "UNet2DConditionModel"}},
          {"vae", {"diffusers", "AutoencoderKL"}}};
}

// SD 1.5's shipped scheduler config (PNDM, scaled_linear 0.00085 -> 0.012, leading spacing).
json scheduler_json() {
  return {{"_class_name", "PNDMScheduler"}, {"_diffusers_version", "0.30.3"},
          {"beta_end", 0.012},              {"beta_schedule", "scaled_linear"},
          {"beta_start", 0.00085},          {"clip_sample", false},
          {"num_train_timesteps", 1000},    {"prediction_type", "epsilon"},
          {"set_alpha_to_one", false},      {"skip_prk_steps", true},
          {"steps_offset", 1},              {"timestep_spacing", "leading"},
          {"trained_betas", nullptr}};
}

torch::Tensor stored(const torch::Tensor& t, std::optional<torch::ScalarType> dtype) {
  return dtype && t.is_floating_point() ? t.to(*dtype) : t;
}

void write_ldm(const Checkpoint& ckpt, const fs::path& path, std::optional<torch::ScalarType> dtype) {
  StateDict out;
  for (auto c : kComponents)
    for (const auto& [key, tensor] : ckpt.component(c))
      out[diffusers_to_ldm(c, key)] = stored(diffusers_tensor_to_ldm(c, key, tensor), dtype);
  if (!ckpt.text_encoder.empty())
    out[std::string(kLdmPositionIdsKey)] =
        torch::arange(ckpt.configs.text_encoder.max_position_embeddings, torch::kLong).unsqueeze(0);
  for (const auto& [key, tensor] : ckpt.extra) out[key] = stored(tensor, dtype);
  save_safetensors(path, out, {ckpt.metadata});
}

void write_diffusers(const Checkpoint& ckpt, const fs::path& path, std::optional<torch::ScalarType> dtype) {
  if (!ckpt.configs_complete)
    throw_file_error(ckpt.source, "a diffusers folder needs the full model config, and the attention head counts "
                                  "of this architecture cannot be inferred from shapes: pass --config DIR");
  write_directory_atomically(path, [&](const fs::path& dir) {
    write_text_atomically(dir / "model_index.json", model_index_json().dump(2));
    fs::create_directories(dir / "scheduler");
    write_text_atomically(dir / "scheduler" / "scheduler_config.json", scheduler_json().dump(2));
    fs::create_directories(dir / "tokenizer");
    write_clip_tokenizer_folder(dir / "tokenizer");
    const json configs[] = {to_json(ckpt.configs.unet), to_json(ckpt.configs.text_encoder), to_json(ckpt.configs.vae)};
    for (int i = 0; i < 3; ++i) {
      const auto c = kComponents[i];
      if (ckpt.component(c).empty()) continue;
      fs::create_directories(dir / component_name(c));
      write_text_atomically(dir / component_name(c) / "config.json", configs[i].dump(2));
      StateDict tensors;
      for (const auto& [key, tensor] : ckpt.component(c)) tensors[key] = stored(tensor, dtype);
      SafeTensorsWriteOptions options;
      options.metadata = {{"format", "pt"}};
      if (c == Component::UNet)
        for (const auto& [k, v] : ckpt.metadata) options.metadata[k] = v;
      save_safetensors(dir / diffusers_weights(c), tensors, options);
    }
  });
}

}  // namespace

std::string_view layout_name(CheckpointLayout layout) {
  return layout == CheckpointLayout::Ldm ? "ldm" : "diffusers";
}

CheckpointLayout parse_layout(const std::string& name) {
  if (name == "ldm") return CheckpointLayout::Ldm;
  if (name == "diffusers") return CheckpointLayout::Diffusers;
  throw Error("unknown layout '" + name + "' (ldm or diffusers)");
}

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32") return torch::kFloat32;
  if (name == "fp16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  throw Error("unknown dtype '" + name + "' (fp32, fp16 or bf16)");
}

CheckpointLayout detect_layout(const fs::path& path) {
  if (!fs::exists(path)) throw_file_error(path, "no such file or folder");
  if (fs::is_directory(path)) {
    if (fs::exists(path / "model_index.json") || fs::exists(path / "unet") || fs::exists(path / "text_encoder") ||
        fs::exists(path / "vae"))
      return CheckpointLayout::Diffusers;
    if (fs::exists(path / "config.json"))
      throw_file_error(path, "this is a single diffusers component folder; pass the model folder that holds "
                             "unet/, text_encoder/ and vae/");
    throw_file_error(path, "folder is not a diffusers model (no model_index.json, unet/, text_encoder/ or vae/)");
  }
  const auto ext = path.extension().string();
  if (ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin")
    throw_file_error(path, "pickled checkpoints are not read (they can run code); convert it to .safetensors first");
  return CheckpointLayout::Ldm;
}

const StateDict& Checkpoint::component(Component c) const {
  switch (c) {
    case Component::UNet: return unet;
    case Component::TextEncoder: return text_encoder;
    case Component::VAE: return vae;
  }
  return unet;
}

StateDict& Checkpoint::component(Component c) {
  return const_cast<StateDict&>(static_cast<const Checkpoint&>(*this).component(c));
}

ModelConfigs infer_configs(const Checkpoint& ckpt, bool* complete) {
  ModelConfigs c = sd15_configs();
  const auto& src = ckpt.source;
  if (!ckpt.unet.empty()) {
    const auto& u = ckpt.unet;
    auto& cfg = c.unet;
    const int64_t blocks = count_indices(u, "down_blocks.");
    cfg.in_channels = dim_of(u, "conv_in.weight", 1, src);
    cfg.out_channels = dim_of(u, "conv_out.weight", 0, src);
    cfg.layers_per_block = count_indices(u, "down_blocks.0.resnets.");
    cfg.block_out_channels.clear();
    cfg.down_block_has_attention.clear();
    cfg.up_block_has_attention.clear();
    for (int64_t i = 0; i < blocks; ++i) {
      const std::string b = "down_blocks." + std::to_string(i);
      cfg.block_out_channels.push_back(dim_of(u, b + ".resnets.0.conv1.weight", 0, src));
      cfg.down_block_has_attention.push_back(u.count(b + ".attentions.0.proj_in.weight") > 0);
      cfg.up_block_has_attention.push_back(u.count("up_blocks." + std::to_string(i) + ".attentions.0.proj_in.weight") > 0);
    }
    cfg.num_attention_heads.assign(blocks, 8);
    for (const auto& [key, t] : u)
      if (key.find("attn2.to_k.weight") != std::string::npos) {
        cfg.cross_attention_dim = t.size(1);
        break;
      }
  }
  if (!ckpt.text_encoder.empty()) {
    const auto& t = ckpt.text_encoder;
    auto& cfg = c.text_encoder;
    cfg.vocab_size = dim_of(t, "text_model.embeddings.token_embedding.weight", 0, src);
    cfg.hidden_size = dim_of(t, "text_model.embeddings.token_embedding.weight", 1, src);
    cfg.max_position_embeddings = dim_of(t, "text_model.embeddings.position_embedding.weight", 0, src);
    cfg.num_hidden_layers = count_indices(t, "text_model.encoder.layers.");
    cfg.intermediate_size = dim_of(t, "text_model.encoder.layers.0.mlp.fc1.weight", 0, src);
    cfg.num_attention_heads = cfg.hidden_size == 768 ? 12 : std::max<int64_t>(1, cfg.hidden_size / 64);
  }
  if (!ckpt.vae.empty()) {
    const auto& v = ckpt.vae;
    auto& cfg = c.vae;
    cfg.in_channels = dim_of(v, "encoder.conv_in.weight", 1, src);
    cfg.out_channels = dim_of(v, "decoder.conv_out.weight", 0, src);
    cfg.latent_channels = dim_of(v, "decoder.conv_in.weight", 1, src);
    cfg.layers_per_block = count_indices(v, "encoder.down_blocks.0.resnets.");
    cfg.block_out_channels.clear();
    for (int64_t i = 0, n = count_indices(v, "encoder.down_blocks."); i < n; ++i)
      cfg.block_out_channels.push_back(
          dim_of(v, "encoder.down_blocks." + std::to_string(i) + ".resnets.0.conv1.weight", 0, src));
  }
  *complete = same_widths(c, sd15_configs());
  return c;
}

Checkpoint read_checkpoint(const fs::path& path, const std::optional<fs::path>& config) {
  const auto layout = detect_layout(path);
  Checkpoint ckpt = layout == CheckpointLayout::Ldm ? read_ldm(path) : read_diffusers(path);
  if (layout == CheckpointLayout::Ldm) {
    bool complete = false;
    ckpt.configs = infer_configs(ckpt, &complete);
    ckpt.configs_complete = complete;
    ckpt.architecture = complete ? "sd15" : "custom widths (inferred from shapes; head counts need --config)";
  } else {
    ckpt.architecture = "from the folder's config.json";
  }
  if (config) {
    ckpt.configs = read_model_configs(*config, ckpt.configs);
    ckpt.configs_complete = true;
    ckpt.architecture = "from --config " + config->string();
  } else if (layout == CheckpointLayout::Diffusers) {
    bool sd15 = false;
    infer_configs(ckpt, &sd15);
    if (sd15) ckpt.architecture = "sd15";
  }
  return ckpt;
}

void write_checkpoint(const Checkpoint& ckpt, const fs::path& path, CheckpointLayout layout,
                      std::optional<torch::ScalarType> dtype) {
  if (layout == CheckpointLayout::Ldm) write_ldm(ckpt, path, dtype);
  else write_diffusers(ckpt, path, dtype);
}

}  // namespace kiln
