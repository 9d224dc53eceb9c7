#include "lab/weight_drift.h"

#include <torch/torch.h>

#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <string_view>
#include <tuple>

#include "util/error.h"

namespace kiln {
namespace {

struct Sums {
  double diff_sq = 0.0;
  double base_sq = 0.0;
  int64_t parameters = 0;

  void add(const Sums& o) {
    diff_sq += o.diff_sq;
    base_sq += o.base_sq;
    parameters += o.parameters;
  }
  double relative() const {
    if (base_sq > 0.0) return std::sqrt(diff_sq) / std::sqrt(base_sq);
    return diff_sq > 0.0 ? std::numeric_limits<double>::infinity() : 0.0;
  }
};

struct ComponentSpec {
  const char* short_name;  // "te" | "unet" | "vae"
  const char* long_name;   // for messages
  const StateDict Checkpoint::*dict;
};

constexpr ComponentSpec kComponents[] = {
    {"te", "text encoder", &Checkpoint::text_encoder},
    {"unet", "UNet", &Checkpoint::unet},
    {"vae", "VAE", &Checkpoint::vae},
};

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// The block number after `prefix` ("down_blocks." -> 1 for "down_blocks.1.resnets..."), or -1.
int block_index(std::string_view key, std::string_view prefix) {
  if (!starts_with(key, prefix)) return -1;
  key.remove_prefix(prefix.size());
  int n = -1;
  auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), n);
  if (ec != std::errc() || end == key.data() || end == key.data() + key.size() || *end != '.') return -1;
  return n;
}

// (rank, index, name): rank orders blocks as they sit in the network, index numbers repeated ones.
using GroupKey = std::tuple<int, int, std::string>;

GroupKey text_encoder_group(std::string_view key) {
  // transformers' CLIPTextModel keeps everything under text_model.; accept it stripped too.
  if (starts_with(key, "text_model.")) key.remove_prefix(std::string_view("text_model.").size());
  if (starts_with(key, "embeddings.")) return {0, 0, "te.embeddings"};
  if (int n = block_index(key, "encoder.layers."); n >= 0) return {1, n, "te.layer." + std::to_string(n)};
  if (starts_with(key, "final_layer_norm.")) return {2, 0, "te.final_layer_norm"};
  return {3, 0, "te.other"};
}

GroupKey unet_group(std::string_view key) {
  if (starts_with(key, "conv_in.")) return {0, 0, "unet.conv_in"};
  if (starts_with(key, "time_embedding.")) return {1, 0, "unet.time_embedding"};
  if (int n = block_index(key, "down_blocks."); n >= 0) return {2, n, "unet.down." + std::to_string(n)};
  if (starts_with(key, "mid_block.")) return {3, 0, "unet.mid"};
  if (int n = block_index(key, "up_blocks."); n >= 0) return {4, n, "unet.up." + std::to_string(n)};
  if (starts_with(key, "conv_norm_out.") || starts_with(key, "conv_out.")) return {5, 0, "unet.out"};
  return {6, 0, "unet.other"};
}

GroupKey group_of(std::string_view component, std::string_view key) {
  if (component == "te") return text_encoder_group(key);
  if (component == "unet") return unet_group(key);
  return {0, 0, "vae"};
}

std::string shape_string(const torch::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

Sums tensor_sums(const torch::Tensor& trained, const torch::Tensor& base) {
  // float64 because fp16/bf16 squares of a large tensor lose the small differences being measured.
  const torch::Tensor b = base.to(torch::kCPU, torch::kFloat64);
  const torch::Tensor t = trained.to(torch::kCPU, torch::kFloat64);
  Sums s;
  s.diff_sq = (t - b).square().sum().item<double>();
  s.base_sq = b.square().sum().item<double>();
  s.parameters = base.numel();
  return s;
}

}  // namespace

std::string drift_group_name(const std::string& component, const std::string& key) {
  return std::get<2>(group_of(component, key));
}

DriftReport weight_drift_report(const Checkpoint& trained, const Checkpoint& base) {
  torch::NoGradGuard no_grad;
  DriftReport report;
  for (const ComponentSpec& spec : kComponents) {
    const StateDict& t = trained.*spec.dict;
    const StateDict& b = base.*spec.dict;
    if (t.empty() && b.empty()) continue;
    // A missing component would otherwise be reported as its first missing tensor.
    if (t.empty() != b.empty())
      throw Error("weight drift: the " + std::string(t.empty() ? "trained" : "base") + " checkpoint has no " +
                  spec.long_name + " but the " + (t.empty() ? "base" : "trained") + " one has");
    for (const auto& [key, tensor] : t) {
      if (!b.count(key))
        throw Error("weight drift: " + std::string(spec.long_name) + " tensor '" + key +
                    "' is in the trained checkpoint but not in the base");
    }
    for (const auto& [key, tensor] : b) {
      if (!t.count(key))
        throw Error("weight drift: " + std::string(spec.long_name) + " tensor '" + key +
                    "' is in the base checkpoint but not in the trained one");
    }
    std::map<GroupKey, Sums> groups;
    Sums total;
    for (const auto& [key, base_tensor] : b) {
      const torch::Tensor& trained_tensor = t.at(key);
      if (!trained_tensor.sizes().equals(base_tensor.sizes()))
        throw Error("weight drift: " + std::string(spec.long_name) + " tensor '" + key + "' has shape " +
                    shape_string(trained_tensor) + " in the trained checkpoint but " +
                    shape_string(base_tensor) + " in the base");
      const Sums s = tensor_sums(trained_tensor, base_tensor);
      groups[group_of(spec.short_name, key)].add(s);
      total.add(s);
    }
    for (const auto& [group_key, sums] : groups)
      report.groups.push_back({std::get<2>(group_key), sums.relative(), sums.parameters});
    report.components.push_back({spec.short_name, total.relative(), total.parameters});
  }
  return report;
}

std::vector<DriftGroup> weight_drift(const Checkpoint& trained, const Checkpoint& base) {
  DriftReport report = weight_drift_report(trained, base);
  std::vector<DriftGroup> out = std::move(report.groups);
  for (DriftGroup& c : report.components)
    if (c.name != "vae") out.push_back(std::move(c));
  return out;
}

}  // namespace kiln
