// Reading and writing SD 1.x checkpoints in the LDM single-file and the diffusers folder layouts
// (spec 6.1-6.4).
#include "io/checkpoint.h"
#include "io/scheduler_config.h"

#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "text/clip_tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr Component kComponents[] = {Component::UNet, Component::TextEncoder, Component::VAE};

// Weight file names inside a diffusers folder (the text encoder keeps transformers' name).
std::string weights_name(Component c, bool fp16_variant) {
  const std::string stem = c == Component::TextEncoder ? "model" : "diffusion_pytorch_model";
  return stem + (fp16_variant ? ".fp16" : "") + ".safetensors";
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? "," : "") << shape[i];
  s << "]";
  return s.str();
}

template <typename T>
std::string list_string(const std::vector<T>& values) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < values.size(); ++i) s << (i ? "," : "") << values[i];
  s << "]";
  return s.str();
}

// ---- recognising what a path holds ----

// torch.save writes a zip archive ("PK\3\4"); older torch and plain pickles start with PROTO (0x80, 2..5).
bool looks_pickled(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char b[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(b), 4);
  if (in.gcount() < 2) return false;
  return (b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4) || (b[0] == 0x80 && b[1] >= 2 && b[1] <= 5);
}

[[noreturn]] void reject_pickle(const fs::path& path) {
  throw_file_error(path,
                   "pickled checkpoints (.ckpt) are not supported: unpickling can run arbitrary code; "
                   "convert it to safetensors");
}

bool any_key(const SafeTensorsFile& file, std::string_view prefix) {
  for (const auto& e : file.entries())
    if (starts_with(e.name, prefix)) return true;
  return false;
}

const TensorEntry* first_key_containing(const SafeTensorsFile& file, std::string_view prefix,
                                        std::string_view part) {
  for (const auto& e : file.entries())
    if (starts_with(e.name, prefix) && contains(e.name, part)) return &e;
  return nullptr;
}

// SDXL and SD 2.x files share the LDM prefixes, so they are told apart by keys and shapes only they have.
void reject_other_ldm_architectures(const SafeTensorsFile& file) {
  if (any_key(file, "conditioner.embedders."))
    throw_file_error(
        file.path(),
        "looks like an SDXL checkpoint (conditioner.embedders.* keys); kiln supports SD 1.x only");
  if (any_key(file, "model.diffusion_model.label_emb."))
    throw_file_error(file.path(),
                     "looks like an SDXL checkpoint (label_emb keys); kiln supports SD 1.x only");
  if (any_key(file, "cond_stage_model.model."))
    throw_file_error(file.path(),
                     "looks like an SD 2.x checkpoint (OpenCLIP text encoder cond_stage_model.model.* "
                     "keys); kiln supports SD 1.x only");
  if (const auto* e = first_key_containing(file, kLdmUNetPrefix, ".proj_in.weight");
      e && e->shape.size() == 2)
    throw_file_error(file.path(), "looks like an SD 2.x checkpoint (linear proj_in " +
                                      shape_string(e->shape) +
                                      ", use_linear_projection); kiln supports SD 1.x only");
  if (const auto* e = first_key_containing(file, kLdmUNetPrefix, ".attn2.to_k.weight");
      e && e->shape.size() == 2 && e->shape[1] == 1024)
    throw_file_error(file.path(), "looks like an SD 2.x checkpoint (1024-wide text context in " + e->name +
                                      "); kiln supports SD 1.x only");
}

// Same checks on diffusers-named tensors (a diffusers folder's weight files).
void reject_other_diffusers_architectures(Component c, const SafeTensorsFile& file) {
  if (c == Component::UNet) {
    if (any_key(file, "add_embedding.") || first_key_containing(file, "", ".transformer_blocks.1."))
      throw_file_error(file.path(),
                       "looks like an SDXL UNet (add_embedding / several transformer blocks per "
                       "attention); kiln supports SD 1.x only");
    if (const auto* e = first_key_containing(file, "", ".proj_in.weight"); e && e->shape.size() == 2)
      throw_file_error(file.path(), "looks like an SD 2.x UNet (linear proj_in " + shape_string(e->shape) +
                                        "); kiln supports SD 1.x only");
    if (const auto* e = first_key_containing(file, "", ".attn2.to_k.weight");
        e && e->shape.size() == 2 && e->shape[1] == 1024)
      throw_file_error(file.path(),
                       "looks like an SD 2.x UNet (1024-wide text context); kiln supports SD 1.x only");
  }
  if (c == Component::TextEncoder) {
    const auto* e = file.find("text_model.embeddings.token_embedding.weight");
    if (e && e->shape.size() == 2 && e->shape[1] == 1024)
      throw_file_error(file.path(),
                       "looks like an SD 2.x text encoder (OpenCLIP ViT-H, width 1024); kiln supports "
                       "SD 1.x only");
  }
}

// What a safetensors file without LDM prefixes is, for the error message.
std::string describe_non_ldm_file(const SafeTensorsFile& file) {
  const char* pass_folder =
      "; pass the whole diffusers model folder (with model_index.json, unet/, text_encoder/, "
      "vae/) or an LDM single-file checkpoint";
  if (any_key(file, "lora_unet_") || any_key(file, "lora_te_"))
    return "this is a LoRA file, not a checkpoint";
  if (file.contains("conv_in.weight") || any_key(file, "down_blocks.") || any_key(file, "time_embedding."))
    return std::string("this is a diffusers UNet weights file alone") + pass_folder;
  if (any_key(file, "text_model."))
    return std::string("this is a text encoder weights file alone") + pass_folder;
  if (any_key(file, "encoder.down_blocks.") || any_key(file, "decoder.up_blocks."))
    return std::string("this is a diffusers VAE weights file alone") + pass_folder;
  if (any_key(file, "encoder.down.") || any_key(file, "decoder.up."))
    return "this is a standalone VAE file (LDM names without first_stage_model.); kiln reads full SD 1.x "
           "checkpoints";
  return "no SD 1.x tensors found (expected model.diffusion_model.*, cond_stage_model.transformer.*, "
         "first_stage_model.*)";
}

bool has_ldm_keys(const SafeTensorsFile& file) {
  for (const auto& e : file.entries())
    if (ldm_component(e.name) || starts_with(e.name, "conditioner.") ||
        starts_with(e.name, "cond_stage_model."))
      return true;
  return false;
}

bool is_diffusers_folder(const fs::path& dir) {
  return fs::exists(dir / "model_index.json") || fs::is_directory(dir / "unet") ||
         fs::is_directory(dir / "text_encoder") || fs::is_directory(dir / "vae");
}

SafeTensorsFile open_ldm_file(const fs::path& path) {
  const auto ext = path.extension().string();
  if (ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin" || looks_pickled(path))
    reject_pickle(path);
  auto file = SafeTensorsFile::open(path);
  if (!has_ldm_keys(file)) throw_file_error(path, describe_non_ldm_file(file));
  return file;
}

// ---- reading ----

Checkpoint read_ldm(const fs::path& path) {
  const auto file = open_ldm_file(path);
  reject_other_ldm_architectures(file);
  Checkpoint ckpt;
  ckpt.source = path;
  ckpt.layout = CheckpointLayout::Ldm;
  ckpt.metadata = file.metadata();
  for (const auto& entry : file.entries()) {
    if (entry.name == kLdmPositionIdsKey) continue;  // arange(77), regenerated on write; not a weight
    const auto component = ldm_component(entry.name);
    if (!component) {
      ckpt.extra[entry.name] = file.tensor(entry.name);
      continue;
    }
    std::string key;
    try {
      key = ldm_to_diffusers(*component, entry.name);
    } catch (const Error& e) {
      throw_file_error(path, e.what());
    }
    auto& dict = ckpt.component(*component);
    if (!dict.emplace(key, ldm_tensor_to_diffusers(*component, key, file.tensor(entry.name))).second)
      throw_file_error(path, "two tensors map to the same diffusers name '" + key +
                                 "' (old and new text encoder names both present?)");
  }
  if (!ckpt.has(Component::UNet) && !ckpt.has(Component::TextEncoder) && !ckpt.has(Component::VAE))
    throw_file_error(path, describe_non_ldm_file(file));
  return ckpt;
}

Checkpoint read_diffusers(const fs::path& dir) {
  if (fs::exists(dir / "text_encoder_2") || fs::exists(dir / "tokenizer_2"))
    throw_file_error(dir, "looks like an SDXL diffusers folder (text_encoder_2); kiln supports SD 1.x only");
  if (fs::exists(dir / "model_index.json")) {
    const json index = read_json_file(dir / "model_index.json");
    const std::string cls = index.is_object() ? index.value("_class_name", "") : "";
    if (contains(cls, "XL"))
      throw_file_error(dir / "model_index.json", "'" + cls + "' is SDXL; kiln supports SD 1.x only");
  }
  Checkpoint ckpt;
  ckpt.source = dir;
  ckpt.layout = CheckpointLayout::Diffusers;
  for (auto c : kComponents) {
    const fs::path part = dir / component_name(c);
    fs::path weights = part / weights_name(c, false);
    if (!fs::exists(weights) && fs::exists(part / weights_name(c, true)))
      weights = part / weights_name(c, true);
    if (!fs::exists(weights)) {
      if (fs::exists(part / "diffusion_pytorch_model.bin") || fs::exists(part / "pytorch_model.bin"))
        throw_file_error(part,
                         "holds pickled .bin weights only; pickled weights are not supported: convert them "
                         "to safetensors");
      continue;
    }
    const auto file = SafeTensorsFile::open(weights);
    reject_other_diffusers_architectures(c, file);
    if (c == Component::UNet || ckpt.metadata.empty()) ckpt.metadata = file.metadata();
    auto& dict = ckpt.component(c);
    for (const auto& entry : file.entries()) {
      // transformers < 4.31 saved position_ids (arange) as a buffer; it is not a weight.
      if (c == Component::TextEncoder && entry.name == "text_model.embeddings.position_ids") continue;
      const std::string key = modern_diffusers_key(c, entry.name);
      try {
        diffusers_to_ldm(c, key);  // every tensor must have its place in the SD 1.x structure
      } catch (const Error& e) {
        throw_file_error(weights, e.what());
      }
      if (!dict.emplace(key, file.tensor(entry.name)).second)
        throw_file_error(weights, "tensor '" + key + "' is stored under its old and its current name");
    }
  }
  if (!ckpt.has(Component::UNet) && !ckpt.has(Component::TextEncoder) && !ckpt.has(Component::VAE))
    throw_file_error(dir,
                     "diffusers folder without weights: none of unet/diffusion_pytorch_model.safetensors, "
                     "text_encoder/model.safetensors, vae/diffusion_pytorch_model.safetensors exists");
  return ckpt;
}

// ---- configs from shapes ----

int64_t count_indices(const StateDict& dict, const std::string& prefix) {
  int64_t count = 0;
  while (true) {
    const std::string p = prefix + std::to_string(count) + ".";
    auto it = dict.lower_bound(p);
    if (it == dict.end() || !starts_with(it->first, p)) return count;
    ++count;
  }
}

int64_t dim_of(const StateDict& dict, const std::string& key, int64_t dim, const fs::path& source,
               int64_t rank = -1) {
  auto it = dict.find(key);
  if (it == dict.end())
    throw_file_error(source, "cannot infer the architecture: tensor '" + key + "' is missing");
  if (it->second.dim() <= dim || (rank >= 0 && it->second.dim() != rank))
    throw_file_error(
        source, "tensor '" + key + "' has an unexpected shape " + shape_string(it->second.sizes().vec()));
  return it->second.size(dim);
}

UNetConfig infer_unet(const StateDict& u, const fs::path& src) {
  UNetConfig cfg;
  const int64_t blocks = count_indices(u, "down_blocks.");
  cfg.in_channels = dim_of(u, "conv_in.weight", 1, src, 4);
  cfg.out_channels = dim_of(u, "conv_out.weight", 0, src, 4);
  cfg.layers_per_block = count_indices(u, "down_blocks.0.resnets.");
  cfg.block_out_channels.clear();
  cfg.down_block_has_attention.clear();
  cfg.up_block_has_attention.clear();
  for (int64_t i = 0; i < blocks; ++i) {
    const std::string b = "down_blocks." + std::to_string(i);
    cfg.block_out_channels.push_back(dim_of(u, b + ".resnets.0.conv1.weight", 0, src, 4));
    cfg.down_block_has_attention.push_back(u.count(b + ".attentions.0.proj_in.weight") > 0);
    cfg.up_block_has_attention.push_back(
        u.count("up_blocks." + std::to_string(i) + ".attentions.0.proj_in.weight") > 0);
  }
  cfg.num_attention_heads.assign(blocks, 8);  // SD 1.5's; only trusted for SD 1.5's widths
  for (const auto& [key, t] : u)
    if (contains(key, ".attn2.to_k.weight")) {
      cfg.cross_attention_dim = dim_of(u, key, 1, src, 2);
      break;
    }
  return cfg;
}

CLIPTextConfig infer_text_encoder(const StateDict& t, const fs::path& src) {
  CLIPTextConfig cfg;
  const std::string token = "text_model.embeddings.token_embedding.weight";
  cfg.vocab_size = dim_of(t, token, 0, src, 2);
  cfg.hidden_size = dim_of(t, token, 1, src, 2);
  cfg.max_position_embeddings = dim_of(t, "text_model.embeddings.position_embedding.weight", 0, src, 2);
  cfg.num_hidden_layers = count_indices(t, "text_model.encoder.layers.");
  cfg.intermediate_size = dim_of(t, "text_model.encoder.layers.0.mlp.fc1.weight", 0, src, 2);
  // SD 1.5's 12 heads of 64; for other widths a placeholder that divides the width (flagged unknown).
  cfg.num_attention_heads = cfg.hidden_size % 64 == 0 ? cfg.hidden_size / 64 : 1;
  return cfg;
}

VAEConfig infer_vae(const StateDict& v, const fs::path& src) {
  VAEConfig cfg;
  cfg.in_channels = dim_of(v, "encoder.conv_in.weight", 1, src, 4);
  cfg.out_channels = dim_of(v, "decoder.conv_out.weight", 0, src, 4);
  cfg.latent_channels = dim_of(v, "decoder.conv_in.weight", 1, src, 4);
  cfg.layers_per_block = count_indices(v, "encoder.down_blocks.0.resnets.");
  cfg.block_out_channels.clear();
  for (int64_t i = 0, n = count_indices(v, "encoder.down_blocks."); i < n; ++i)
    cfg.block_out_channels.push_back(
        dim_of(v, "encoder.down_blocks." + std::to_string(i) + ".resnets.0.conv1.weight", 0, src, 4));
  return cfg;
}

// The fields tensor shapes determine, as (name, value) pairs, for comparing configs with weights.
using Widths = std::vector<std::pair<std::string, std::string>>;

Widths widths(const UNetConfig& c) {
  return {{"in_channels", std::to_string(c.in_channels)},
          {"out_channels", std::to_string(c.out_channels)},
          {"block_out_channels", list_string(c.block_out_channels)},
          {"layers_per_block", std::to_string(c.layers_per_block)},
          {"cross_attention_dim", std::to_string(c.cross_attention_dim)},
          {"down_block_types (attention)", list_string(c.down_block_has_attention)},
          {"up_block_types (attention)", list_string(c.up_block_has_attention)}};
}

Widths widths(const CLIPTextConfig& c) {
  return {{"vocab_size", std::to_string(c.vocab_size)},
          {"hidden_size", std::to_string(c.hidden_size)},
          {"intermediate_size", std::to_string(c.intermediate_size)},
          {"num_hidden_layers", std::to_string(c.num_hidden_layers)},
          {"max_position_embeddings", std::to_string(c.max_position_embeddings)}};
}

Widths widths(const VAEConfig& c) {
  return {{"in_channels", std::to_string(c.in_channels)},
          {"out_channels", std::to_string(c.out_channels)},
          {"latent_channels", std::to_string(c.latent_channels)},
          {"block_out_channels", list_string(c.block_out_channels)},
          {"layers_per_block", std::to_string(c.layers_per_block)}};
}

Widths widths(const ModelConfigs& c, Component part) {
  switch (part) {
    case Component::UNet:
      return widths(c.unet);
    case Component::TextEncoder:
      return widths(c.text_encoder);
    case Component::VAE:
      return widths(c.vae);
  }
  return {};
}

// The components a --config path (or a diffusers folder) provides config.json files for.
std::set<Component> configured_components(const fs::path& path) {
  std::set<Component> found;
  auto classify = [&](const fs::path& file) {
    const json j = read_json_file(file);
    if (!j.is_object()) return;
    const std::string cls = j.value("_class_name", "");
    if (cls == "UNet2DConditionModel")
      found.insert(Component::UNet);
    else if (cls == "AutoencoderKL")
      found.insert(Component::VAE);
    else if (j.contains("architectures") || j.value("model_type", "") == "clip_text_model")
      found.insert(Component::TextEncoder);
  };
  if (fs::is_regular_file(path)) {
    classify(path);
    return found;
  }
  for (auto c : kComponents)
    if (fs::exists(path / component_name(c) / "config.json"))
      classify(path / component_name(c) / "config.json");
  if (fs::exists(path / "config.json")) classify(path / "config.json");
  return found;
}

bool same_heads(const ModelConfigs& a, const ModelConfigs& b, Component part) {
  switch (part) {
    case Component::UNet:
      return a.unet.num_attention_heads == b.unet.num_attention_heads;
    case Component::TextEncoder:
      return a.text_encoder.num_attention_heads == b.text_encoder.num_attention_heads;
    case Component::VAE:
      return true;
  }
  return false;
}

// ---- writing ----

json model_index_json(const Checkpoint& ckpt) {
  auto entry = [&](Component c, const char* library, const char* cls) {
    return ckpt.has(c) ? json::array({library, cls}) : json::array({nullptr, nullptr});
  };
  return {{"_class_name", "StableDiffusionPipeline"},
          {"_diffusers_version", "0.30.3"},
          {"feature_extractor", {nullptr, nullptr}},
          {"image_encoder", {nullptr, nullptr}},
          {"requires_safety_checker", false},
          {"safety_checker", {nullptr, nullptr}},
          {"scheduler", {"diffusers", "PNDMScheduler"}},
          {"text_encoder", entry(Component::TextEncoder, "transformers", "CLIPTextModel")},
          {"tokenizer", {"transformers", "CLIPTokenizer"}},
          {"unet", entry(Component::UNet, "diffusers", "UNet2DConditionModel")},
          {"vae", entry(Component::VAE, "diffusers", "AutoencoderKL")}};
}

// The scheduler: the model folder's own config, then --config's, then an LDM file's model-spec
// prediction type (the file's own word on what it predicts).
NoiseScheduleConfig read_scheduler(const fs::path& path, const std::optional<fs::path>& config,
                                   const Metadata& metadata) {
  NoiseScheduleConfig out;
  std::vector<fs::path> folders{path};
  if (config) folders.push_back(*config);
  for (const auto& folder : folders) {
    const auto file = folder / "scheduler" / "scheduler_config.json";
    if (fs::is_directory(folder) && fs::is_regular_file(file)) out = read_scheduler_config(file);
  }
  if (const auto it = metadata.find(std::string(kPredictionMetadataKey)); it != metadata.end())
    out.prediction = it->second == "v" ? Prediction::V : Prediction::Epsilon;
  return out;
}

torch::Tensor stored(const torch::Tensor& t, std::optional<torch::ScalarType> dtype) {
  return dtype && t.is_floating_point() ? t.to(*dtype) : t;
}

void write_ldm(const Checkpoint& ckpt, const fs::path& path, std::optional<torch::ScalarType> dtype) {
  StateDict out = ldm_state_dict(ckpt);
  for (auto& [key, tensor] : out) tensor = stored(tensor, dtype);
  // Stated for v models (and kept true for files that said so); epsilon files stay as they were.
  Metadata metadata = ckpt.metadata;
  const std::string key(kPredictionMetadataKey);
  if (ckpt.scheduler.prediction == Prediction::V || metadata.count(key))
    metadata[key] = ckpt.scheduler.prediction == Prediction::V ? "v" : "epsilon";
  save_safetensors(path, out, {metadata});
}

void write_diffusers(const Checkpoint& ckpt, const fs::path& path, std::optional<torch::ScalarType> dtype) {
  if (!ckpt.configs_complete) throw_file_error(ckpt.source, std::string(kHeadCountsUnknown));
  const json configs[] = {to_json(ckpt.configs.unet), to_json(ckpt.configs.text_encoder),
                          to_json(ckpt.configs.vae)};
  write_directory_atomically(path, [&](const fs::path& dir) {
    write_text_atomically(dir / "model_index.json", model_index_json(ckpt).dump(2));
    fs::create_directories(dir / "scheduler");
    write_text_atomically(dir / "scheduler" / "scheduler_config.json", scheduler_config_json(ckpt.scheduler).dump(2));
    fs::create_directories(dir / "tokenizer");
    write_clip_tokenizer_folder(dir / "tokenizer");
    for (int i = 0; i < 3; ++i) {
      const auto c = kComponents[i];
      if (!ckpt.has(c)) continue;
      const fs::path part = dir / component_name(c);
      fs::create_directories(part);
      write_text_atomically(part / "config.json", configs[i].dump(2));
      StateDict tensors;
      for (const auto& [key, tensor] : ckpt.component(c)) tensors[key] = stored(tensor, dtype);
      SafeTensorsWriteOptions options;
      options.metadata = {{"format", "pt"}};  // what transformers/diffusers write and check for
      if (c == Component::UNet)
        for (const auto& [k, v] : ckpt.metadata) options.metadata.emplace(k, v);
      save_safetensors(dir / diffusers_weights_file(c), tensors, options);
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

StateDict ldm_state_dict(const Checkpoint& ckpt) {
  StateDict out;
  for (auto c : kComponents)
    for (const auto& [key, tensor] : ckpt.component(c))
      out[diffusers_to_ldm(c, key)] = diffusers_tensor_to_ldm(c, key, tensor);
  // Real SD 1.x files carry it (transformers < 4.31 saved it); some loaders look for it.
  if (ckpt.has(Component::TextEncoder))
    out[std::string(kLdmPositionIdsKey)] =
        torch::arange(ckpt.configs.text_encoder.max_position_embeddings, torch::kLong).unsqueeze(0);
  for (const auto& [key, tensor] : ckpt.extra)
    if (!out.emplace(key, tensor).second)
      throw_file_error(ckpt.source, "extra tensor '" + key + "' collides with a model tensor");
  return out;
}

fs::path diffusers_weights_file(Component c) { return fs::path(component_name(c)) / weights_name(c, false); }

CheckpointLayout detect_layout(const fs::path& path) {
  if (!fs::exists(path)) throw_file_error(path, "no such file or folder");
  if (fs::is_directory(path)) {
    if (is_diffusers_folder(path)) return CheckpointLayout::Diffusers;
    if (fs::exists(path / "config.json") || fs::exists(path / "diffusion_pytorch_model.safetensors") ||
        fs::exists(path / "model.safetensors"))
      throw_file_error(path,
                       "this is a single diffusers component folder; pass the model folder that holds "
                       "model_index.json, unet/, text_encoder/ and vae/");
    throw_file_error(path,
                     "folder is not a diffusers model (no model_index.json, unet/, text_encoder/ or vae/)");
  }
  open_ldm_file(path);
  return CheckpointLayout::Ldm;
}

const StateDict& Checkpoint::component(Component c) const {
  switch (c) {
    case Component::UNet:
      return unet;
    case Component::TextEncoder:
      return text_encoder;
    case Component::VAE:
      return vae;
  }
  return unet;
}

StateDict& Checkpoint::component(Component c) {
  return const_cast<StateDict&>(static_cast<const Checkpoint&>(*this).component(c));
}

ModelConfigs infer_configs(const Checkpoint& ckpt, bool* complete) {
  const ModelConfigs sd15 = sd15_configs();
  ModelConfigs c = sd15;
  if (ckpt.has(Component::UNet)) c.unet = infer_unet(ckpt.unet, ckpt.source);
  if (ckpt.has(Component::TextEncoder)) c.text_encoder = infer_text_encoder(ckpt.text_encoder, ckpt.source);
  if (ckpt.has(Component::VAE)) c.vae = infer_vae(ckpt.vae, ckpt.source);
  bool all_sd15 = true;
  for (auto part : kComponents)
    if (ckpt.has(part) && widths(c, part) != widths(sd15, part)) all_sd15 = false;
  if (all_sd15)
    c = [&] {  // SD 1.5's widths: its head counts are the right ones
      ModelConfigs known = c;
      known.unet.num_attention_heads = sd15.unet.num_attention_heads;
      known.text_encoder.num_attention_heads = sd15.text_encoder.num_attention_heads;
      return known;
    }();
  if (complete) *complete = all_sd15;
  return c;
}

Checkpoint read_checkpoint(const fs::path& path, const std::optional<fs::path>& config) {
  const auto layout = detect_layout(path);
  Checkpoint ckpt = layout == CheckpointLayout::Ldm ? read_ldm(path) : read_diffusers(path);
  const ModelConfigs sd15 = sd15_configs();
  const ModelConfigs from_shapes = infer_configs(ckpt, nullptr);

  // Per component: config.json (folder), then --config, else shapes (head counts known only for SD 1.5
  // widths).
  std::set<Component> configured;
  ckpt.configs = from_shapes;
  if (layout == CheckpointLayout::Diffusers) {
    configured = configured_components(path);
    if (!configured.empty()) ckpt.configs = read_model_configs(path, ckpt.configs);
  }
  if (config) {
    ckpt.configs =
        read_model_configs(*config, ckpt.configs);  // its errors name the config file and the problem
    const auto given = configured_components(*config);
    configured.insert(given.begin(), given.end());
  }

  bool complete = true, is_sd15 = true;
  for (auto part : kComponents) {
    if (!ckpt.has(part)) continue;
    // A config that disagrees with the tensors would only fail later, tensor by tensor; say it here.
    const auto said = widths(ckpt.configs, part), found = widths(from_shapes, part);
    for (size_t i = 0; i < said.size(); ++i)
      if (said[i].second != found[i].second)
        throw_file_error(path, std::string(component_name(part)) + " config says " + said[i].first + " = " +
                                   said[i].second + " but the tensors have " + found[i].second +
                                   (config ? " (config from " + config->string() + ")" : ""));
    const bool sd15_widths = found == widths(sd15, part);
    if (!configured.count(part) && !sd15_widths) complete = false;
    if (!sd15_widths || !same_heads(ckpt.configs, sd15, part)) is_sd15 = false;
  }
  ckpt.configs_complete = complete;
  ckpt.scheduler = read_scheduler(path, config, ckpt.metadata);
  ckpt.architecture = is_sd15    ? "sd15"
                      : complete ? "sd1x-custom"
                                 : "sd1x-custom (widths from shapes; head counts unknown: pass --config DIR)";
  return ckpt;
}

void write_checkpoint(const Checkpoint& ckpt, const fs::path& destination, CheckpointLayout layout,
                      std::optional<torch::ScalarType> dtype) {
  // "out/" names the folder "out".
  const fs::path path = destination.filename().empty() ? destination.parent_path() : destination;
  if (path.empty()) throw_file_error(destination, "not a file or folder name");
  if (dtype && !c10::isFloatingType(*dtype))
    throw_file_error(path, "the output dtype must be a floating type");
  if (layout == CheckpointLayout::Ldm) {
    if (fs::is_directory(path))
      throw_file_error(path, "is a folder; an LDM checkpoint is a single .safetensors file");
    write_ldm(ckpt, path, dtype);
    return;
  }
  // The folder replaces whatever is there: make sure that is a diffusers model (or nothing).
  if (fs::exists(path) && !fs::is_directory(path))
    throw_file_error(path, "is a file; refusing to replace it with a diffusers folder");
  if (fs::is_directory(path) && !fs::is_empty(path) && !fs::exists(path / "model_index.json"))
    throw_file_error(
        path, "is a folder that is not a diffusers model (no model_index.json); refusing to replace it");
  write_diffusers(ckpt, path, dtype);
}

}  // namespace kiln
