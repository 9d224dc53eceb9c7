#include "surgery/lora.h"

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <cmath>
#include <optional>
#include <set>
#include <sstream>

#include "util/error.h"
#include "util/sha256.h"

namespace kiln {
namespace {

constexpr std::string_view kUNetPrefix = "lora_unet_";
constexpr std::string_view kTextEncoderPrefix = "lora_te_";

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }
bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string kohya_name(std::string_view prefix, std::string_view module_path) {
  std::string name(prefix);
  for (char ch : module_path) name += ch == '.' ? '_' : ch;
  return name;
}

std::string_view strip_weight(std::string_view key) { return key.substr(0, key.size() - 7); }  // ".weight"

enum class Part { Down, Up, Alpha };

struct PartSuffix {
  std::string_view suffix;
  Part part;
};
// lora_A / lora_B are PEFT's (and A1111 accepts them under kohya names too).
constexpr PartSuffix kPartSuffixes[] = {
    {".lora_down.weight", Part::Down}, {".lora_up.weight", Part::Up}, {".lora_A.weight", Part::Down},
    {".lora_B.weight", Part::Up},      {".alpha", Part::Alpha},
};

// Tensors of networks that are not plain LoRA: merging only their LoRA-looking part would be wrong.
constexpr std::string_view kForeignParts[] = {
    ".hada_w1_a", ".hada_w1_b",       ".hada_w2_a",  ".hada_w2_b",
    ".hada_t1",   ".hada_t2",         ".lokr_w1",    ".lokr_w2",
    ".lokr_w1_a", ".lokr_w1_b",       ".lokr_w2_a",  ".lokr_w2_b",
    ".lokr_t2",   ".lora_mid.weight", ".dora_scale", ".lora_magnitude_vector",
    ".diff",      ".diff_b",          ".oft_blocks", ".oft_diag",
    ".ia3_w",     ".w_norm",          ".b_norm"};

struct ParsedKey {
  std::string module_id;  // the key without its part suffix
  std::optional<Part> part;
  bool foreign = false;
};

ParsedKey parse_key(const std::string& key) {
  for (const auto& [suffix, part] : kPartSuffixes)
    if (ends_with(key, suffix)) return {key.substr(0, key.size() - suffix.size()), part};
  for (std::string_view suffix : kForeignParts) {
    if (ends_with(key, suffix)) return {key.substr(0, key.size() - suffix.size()), std::nullopt, true};
    if (ends_with(key, std::string(suffix) + ".weight"))
      return {key.substr(0, key.size() - suffix.size() - 7), std::nullopt, true};
  }
  return {key, std::nullopt};
}

const LoraTarget* resolve(const LoraTargets& targets, std::string_view id) {
  if (starts_with(id, kUNetPrefix) || starts_with(id, kTextEncoderPrefix))
    return targets.by_name(std::string(id));
  // PEFT / diffusers: dotted module paths under the pipeline component's name.
  if (starts_with(id, "base_model.model.")) id.remove_prefix(17);
  for (const auto& [prefix, component] : {std::pair<std::string_view, Component>{"unet.", Component::UNet},
                                          {"text_encoder.", Component::TextEncoder}})
    if (starts_with(id, prefix))
      return targets.by_weight_key(component, std::string(id.substr(prefix.size())) + ".weight");
  return nullptr;
}

std::string shape_text(at::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ",")); }
std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ","));
}

// What is wrong with a module's shapes for its target weight, or "" when they fit. The checks are
// on products so that a 1x1 conv target also takes 2-D factors, as A1111 and ComfyUI allow.
std::string shape_problem(const torch::Tensor& down, const torch::Tensor& up, const LoraTarget& target) {
  if (down.dim() != 2 && down.dim() != 4) return "lora_down has shape " + shape_text(down.sizes());
  if (up.dim() != 2 && up.dim() != 4) return "lora_up has shape " + shape_text(up.sizes());
  const int64_t out = target.shape[0];
  int64_t fan_in = 1;
  for (size_t i = 1; i < target.shape.size(); ++i) fan_in *= target.shape[i];
  const int64_t r = down.size(0);
  const bool up_fits = up.size(0) == out && up.size(1) == r && up.numel() == out * r;
  const bool down_fits = r > 0 && down.numel() == r * fan_in;
  if (up_fits && down_fits) return "";
  return fmt::format("lora_down {} / lora_up {} do not fit weight {}", shape_text(down.sizes()),
                     shape_text(up.sizes()), shape_text(target.shape));
}

std::string name_list(const std::vector<std::string>& names, size_t limit = 20) {
  std::string text;
  for (size_t i = 0; i < names.size() && i < limit; ++i) text += (i ? ", " : "") + names[i];
  if (names.size() > limit) text += fmt::format(" and {} more", names.size() - limit);
  return text;
}

// Python's str(float), which kohya writes for alphas: "2.0", "0.5".
std::string python_float(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 1e16) return fmt::format("{:.1f}", v);
  return fmt::format("{}", v);
}

}  // namespace

LoraTargets::LoraTargets(const StateDict& unet, const StateDict& text_encoder) {
  auto add_name = [&](const std::string& name, size_t index) {
    auto [it, inserted] = by_name_.emplace(name, index);
    if (!inserted && it->second != index)
      throw Error(fmt::format("LoRA module name {} would mean both {} and {}", name,
                              targets_[it->second].weight_key, targets_[index].weight_key));
  };
  for (const auto& [component, dict] : {std::pair<Component, const StateDict*>{Component::UNet, &unet},
                                        {Component::TextEncoder, &text_encoder}}) {
    for (const auto& [key, tensor] : *dict) {
      if (!ends_with(key, ".weight") || (tensor.dim() != 2 && tensor.dim() != 4) ||
          !tensor.is_floating_point())
        continue;
      // Embedding tables are 2-D too, but no LoRA tool targets them.
      if (component == Component::TextEncoder && key.find("embeddings.") != std::string::npos) continue;
      const size_t index = targets_.size();
      const auto prefix = component == Component::UNet ? kUNetPrefix : kTextEncoderPrefix;
      targets_.push_back({kohya_name(prefix, strip_weight(key)), component, key, tensor.sizes().vec()});
      by_key_.emplace(std::pair{component, key}, index);
      add_name(targets_.back().name, index);
      if (component == Component::UNet) {
        // ComfyUI also accepts the LDM module path under the same prefix.
        const std::string ldm = diffusers_to_ldm(Component::UNet, key);
        if (starts_with(ldm, kLdmUNetPrefix) && ends_with(ldm, ".weight"))
          add_name(kohya_name(kUNetPrefix, strip_weight(ldm.substr(kLdmUNetPrefix.size()))), index);
      }
    }
  }
}

const LoraTarget* LoraTargets::by_name(const std::string& kohya_name) const {
  auto it = by_name_.find(kohya_name);
  return it == by_name_.end() ? nullptr : &targets_[it->second];
}

const LoraTarget* LoraTargets::by_weight_key(Component c, const std::string& weight_key) const {
  auto it = by_key_.find({c, weight_key});
  return it == by_key_.end() ? nullptr : &targets_[it->second];
}

LoraTargets lora_targets(const Checkpoint& checkpoint) {
  return LoraTargets(checkpoint.unet, checkpoint.text_encoder);
}

LoraTargets lora_targets(const StableDiffusionModels& models) {
  return LoraTargets(state_dict(*models.unet), state_dict(*models.text_encoder));
}

bool is_kohya_default_target(const LoraTarget& t) {
  if (t.component == Component::TextEncoder)
    return t.weight_key.find(".self_attn.") != std::string::npos ||
           t.weight_key.find(".mlp.") != std::string::npos;
  const bool in_transformer = t.weight_key.find(".attentions.") != std::string::npos;
  const bool linear_or_1x1 =
      t.shape.size() == 2 || (t.shape.size() == 4 && t.shape[2] == 1 && t.shape[3] == 1);
  return in_transformer && linear_or_1x1;
}

LoraFile read_lora(const std::filesystem::path& path, const LoraTargets& targets,
                   const LoraReadOptions& options) {
  const auto file = SafeTensorsFile::open(path);
  struct Parts {
    const LoraTarget* target = nullptr;
    std::string id;  // as named in the file
    torch::Tensor down, up, alpha;
  };
  std::map<std::string, Parts> modules;  // by canonical name
  std::vector<std::string> unknown_modules, unknown_keys, foreign, problems;
  std::set<std::string> seen_unknown;
  for (const auto& entry : file.entries()) {
    const ParsedKey parsed = parse_key(entry.name);
    const LoraTarget* target = resolve(targets, parsed.module_id);
    if (parsed.foreign) {
      foreign.push_back(entry.name);
      continue;
    }
    if (!target || !parsed.part) {
      unknown_keys.push_back(entry.name);
      if (seen_unknown.insert(parsed.module_id).second) unknown_modules.push_back(parsed.module_id);
      continue;
    }
    Parts& parts = modules[target->name];
    if (parts.target && parts.id != parsed.module_id) {
      problems.push_back(fmt::format("{} and {} name the same module", parts.id, parsed.module_id));
      continue;
    }
    parts.target = target;
    parts.id = parsed.module_id;
    torch::Tensor& slot = *parsed.part == Part::Down ? parts.down
                          : *parsed.part == Part::Up ? parts.up
                                                     : parts.alpha;
    if (slot.defined()) {
      problems.push_back(fmt::format("{} is given twice (lora_down/lora_A or lora_up/lora_B)", entry.name));
      continue;
    }
    slot = file.tensor(entry.name);
  }
  if (!foreign.empty())
    throw_file_error(path,
                     "not a plain LoRA (LyCORIS LoHa / LoKr / DoRA / OFT / full-diff tensors, which kiln "
                     "does not support): " +
                         name_list(foreign));
  if (!unknown_modules.empty() && !options.allow_unknown)
    throw_file_error(path, fmt::format("{} LoRA module{} match no weight of the model (a LoRA for another "
                                       "architecture?): {}",
                                       unknown_modules.size(), unknown_modules.size() == 1 ? "" : "s",
                                       name_list(unknown_modules)));

  LoraFile lora;
  lora.metadata = file.metadata();
  lora.unknown_keys = std::move(unknown_keys);
  for (auto& [name, parts] : modules) {
    if (!parts.down.defined() || !parts.up.defined()) {
      problems.push_back(
          fmt::format("{} has no {}", parts.id, parts.down.defined() ? "lora_up" : "lora_down"));
      continue;
    }
    if (auto problem = shape_problem(parts.down, parts.up, *parts.target); !problem.empty()) {
      problems.push_back(parts.id + ": " + problem);
      continue;
    }
    double alpha = 0;
    if (parts.alpha.defined()) {
      if (parts.alpha.numel() != 1) {
        problems.push_back(parts.id + ": alpha has shape " + shape_text(parts.alpha.sizes()));
        continue;
      }
      alpha = parts.alpha.to(torch::kDouble).item<double>();
    }
    if (alpha == 0) alpha = static_cast<double>(parts.down.size(0));  // kohya: None or 0 means scale 1
    lora.modules.push_back(
        {name, parts.target->component, parts.target->weight_key, parts.down, parts.up, alpha});
  }
  if (!problems.empty()) throw_file_error(path, "bad LoRA modules: " + name_list(problems, 10));
  if (lora.modules.empty() && !options.allow_unknown) throw_file_error(path, "no LoRA modules in the file");
  return lora;
}

LoraFile read_lora(const std::filesystem::path& path, const Checkpoint& checkpoint,
                   const LoraReadOptions& options) {
  return read_lora(path, lora_targets(checkpoint), options);
}

void save_lora(const std::filesystem::path& path, const LoraFile& lora, torch::ScalarType dtype) {
  if (lora.modules.empty()) throw_file_error(path, "no LoRA modules to write");
  StateDict tensors;
  std::set<int64_t> ranks;
  std::set<double> alphas;
  for (const auto& m : lora.modules) {
    if (tensors.count(m.name + ".alpha")) throw_file_error(path, "LoRA module " + m.name + " appears twice");
    tensors[m.name + ".lora_down.weight"] = m.down.detach().to(torch::kCPU, dtype).contiguous();
    tensors[m.name + ".lora_up.weight"] = m.up.detach().to(torch::kCPU, dtype).contiguous();
    // F32 whatever the weights' dtype: an fp16 alpha would round values like 0.1.
    tensors[m.name + ".alpha"] = torch::scalar_tensor(m.alpha, torch::kFloat);
    ranks.insert(m.rank());
    alphas.insert(m.alpha);
  }
  Metadata metadata = lora.metadata;
  metadata.erase("sshs_model_hash");
  metadata.erase("sshs_legacy_hash");
  metadata["ss_network_module"] = "networks.lora";
  metadata["ss_network_dim"] = ranks.size() == 1 ? std::to_string(*ranks.begin()) : "Dynamic";
  metadata["ss_network_alpha"] = alphas.size() == 1 ? python_float(*alphas.begin()) : "Dynamic";
  metadata["ss_base_model_version"] = "sd_v1";
  metadata["ss_v2"] = "False";

  // kohya hashes the file as written with only the ss_* training metadata (user metadata may change
  // later without changing the hash). The data section does not depend on the header, so
  // sshs_model_hash is also the sha256 of the final file after its header.
  Metadata training;
  for (const auto& [k, v] : metadata)
    if (starts_with(k, "ss_")) training[k] = v;
  const std::filesystem::path scratch = path.string() + ".kiln-hash.tmp";
  try {
    save_safetensors(scratch, tensors, {training});
    const auto written = SafeTensorsFile::open(scratch);
    const std::string_view bytes = written.bytes();
    const auto header = 8 + written.header().header_length;
    metadata["sshs_model_hash"] = sha256_bytes(bytes.substr(header));
    constexpr size_t kLegacyOffset = 0x100000, kLegacySize = 0x10000;
    const auto legacy =
        bytes.size() > kLegacyOffset ? bytes.substr(kLegacyOffset, kLegacySize) : std::string_view{};
    metadata["sshs_legacy_hash"] = sha256_bytes(legacy).substr(0, 8);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(scratch, ignored);
    throw;
  }
  std::filesystem::remove(scratch);
  save_safetensors(path, tensors, {metadata});
}

LoraSpec parse_lora_spec(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon != std::string::npos && colon > 0 && colon + 1 < text.size()) {
    const std::string ratio_text = text.substr(colon + 1);
    double ratio = 0;
    const char* end = ratio_text.data() + ratio_text.size();
    const auto [ptr, ec] = std::from_chars(ratio_text.data(), end, ratio);
    if (ec == std::errc() && ptr == end && std::isfinite(ratio)) return {text.substr(0, colon), ratio};
  }
  if (text.empty()) throw Error("empty LoRA file name");
  return {text, 1.0};
}

}  // namespace kiln
