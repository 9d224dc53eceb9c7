#include "surgery/merge.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <map>

#include "util/error.h"

namespace kiln {

namespace {

constexpr std::array<Component, 3> kParts = {Component::UNet, Component::TextEncoder, Component::VAE};

constexpr std::array<std::string_view, kMergeBlockCount> kBlockNames = {
    "BASE",  "IN00",  "IN01",  "IN02",  "IN03",  "IN04",  "IN05",  "IN06",  "IN07",
    "IN08",  "IN09",  "IN10",  "IN11",  "M00",   "OUT00", "OUT01", "OUT02", "OUT03",
    "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"};

constexpr size_t kInputBlocks = 12;
constexpr size_t kFirstInputBlock = 1;                            // IN00
constexpr size_t kMiddleBlock = kFirstInputBlock + kInputBlocks;  // M00
constexpr size_t kFirstOutputBlock = kMiddleBlock + 1;            // OUT00
constexpr size_t kLastBlock = kMergeBlockCount - 1;               // OUT11

size_t part_index(Component c) { return static_cast<size_t>(c); }

// N in "<marker>N." (the regex `\.input_blocks\.(\d+)\.` of SuperMerger, first occurrence).
std::optional<size_t> index_after(std::string_view key, std::string_view marker) {
  auto pos = key.find(marker);
  if (pos == std::string_view::npos) return std::nullopt;
  pos += marker.size();
  size_t n = 0, digits = 0;
  for (; pos < key.size() && key[pos] >= '0' && key[pos] <= '9'; ++pos, ++digits)
    n = n * 10 + (key[pos] - '0');
  if (digits == 0 || pos >= key.size() || key[pos] != '.') return std::nullopt;
  return n;
}

// What a node holds per component, without touching tensor data: enough to check architectures
// before any arithmetic and to know each output tensor's natural dtype and config.
struct TensorInfo {
  std::vector<int64_t> shape;
  torch::ScalarType dtype;
};
using PartInfo = std::map<std::string, TensorInfo>;

struct NodeInfo {
  std::string label;  // a file for inputs, "step 'x'" for steps
  std::array<PartInfo, 3> parts;
  std::array<const Checkpoint*, 3> config_source{};
};

std::string describe_key(Component c, const std::string& key) {
  std::string ldm;
  try {
    ldm = diffusers_to_ldm(c, key);
  } catch (const Error&) {
    return fmt::format("{} tensor '{}'", component_name(c), key);
  }
  return fmt::format("{} tensor '{}' ({})", component_name(c), key, ldm);
}

// Refuses unless `b` holds exactly `a`'s keys with `a`'s shapes for component c, naming the first
// key (in name order) that differs. A1111 silently skips keys missing in B and keeps A's tensor;
// kiln refuses, because a half-merged component is rarely what was meant and is invisible afterwards.
void check_same_part(const std::string& step, Component c, const NodeInfo& a, const NodeInfo& b) {
  const PartInfo& pa = a.parts[part_index(c)];
  const PartInfo& pb = b.parts[part_index(c)];
  auto ia = pa.begin(), ib = pb.begin();
  auto missing = [&](const NodeInfo& lacking, const NodeInfo& having, const std::string& key) {
    throw Error(fmt::format(
        "{}: {} has no {}, which {} has: the inputs differ in architecture (kiln merges only inputs with "
        "the same tensors; take the whole component from one input instead)",
        step, lacking.label, describe_key(c, key), having.label));
  };
  while (ia != pa.end() || ib != pb.end()) {
    if (ib == pb.end() || (ia != pa.end() && ia->first < ib->first)) missing(b, a, ia->first);
    if (ia == pa.end() || ib->first < ia->first) missing(a, b, ib->first);
    if (ia->second.shape != ib->second.shape)
      throw Error(fmt::format("{}: {} has shape [{}] in {} but [{}] in {}: the inputs differ in architecture",
                              step, describe_key(c, ia->first), fmt::join(ia->second.shape, ", "), a.label,
                              fmt::join(ib->second.shape, ", "), b.label));
    ++ia;
    ++ib;
  }
}

NodeInfo input_info(const Checkpoint& checkpoint) {
  NodeInfo node;
  node.label = checkpoint.source.string();
  for (auto c : kParts) {
    for (const auto& [key, t] : checkpoint.component(c))
      node.parts[part_index(c)].emplace(key, TensorInfo{t.sizes().vec(), t.scalar_type()});
    node.config_source[part_index(c)] = &checkpoint;
  }
  return node;
}

void check_alpha(const MergeStep& step, double alpha) {
  if (!std::isfinite(alpha))
    throw Error(fmt::format("step '{}': alpha {} is not a finite number", step.name, alpha));
}

NodeInfo step_info(const MergeStep& step, size_t self, const std::vector<NodeInfo>& nodes) {
  const std::string where = fmt::format("step '{}'", step.name);
  for (size_t operand : step.operands)
    if (operand >= self)
      throw Error(fmt::format("{}: operand {} is not an earlier step or an input", where, operand));
  const MergeSpec& spec = step.spec;
  check_alpha(step, spec.alpha);
  if (spec.base_alpha) check_alpha(step, *spec.base_alpha);
  if (spec.unet_blocks)
    for (double w : *spec.unet_blocks) check_alpha(step, w);

  NodeInfo node;
  node.label = where;
  const size_t needed = spec.method == MergeMethod::WeightedSum ? 2 : 3;
  for (auto c : kParts) {
    const ComponentMerge& choice = spec.component(c);
    if (choice.alpha) check_alpha(step, *choice.alpha);
    const size_t i = part_index(c);
    if (choice.from) {
      if (*choice.from >= step.operands.size())
        throw Error(fmt::format("{}: {} is taken from operand {} of {}", where, component_name(c),
                                *choice.from, step.operands.size()));
      const NodeInfo& source = nodes[step.operands[*choice.from]];
      // A whole component from another input must still fit the others: same architecture as A's.
      const NodeInfo& a = nodes[step.operands.front()];
      if (!a.parts[i].empty() && &source != &a) check_same_part(where, c, a, source);
      node.parts[i] = source.parts[i];
      node.config_source[i] = source.config_source[i];
      continue;
    }
    if (step.operands.size() < needed)
      throw Error(fmt::format("{}: {} needs {} inputs to merge {}", where,
                              spec.method == MergeMethod::WeightedSum ? "weighted sum" : "add difference",
                              needed, component_name(c)));
    const NodeInfo& a = nodes[step.operands[0]];
    for (size_t k = 1; k < needed; ++k) check_same_part(where, c, a, nodes[step.operands[k]]);
    node.parts[i] = a.parts[i];
    node.config_source[i] = a.config_source[i];
  }
  return node;
}

// Makes each step's tensor for one key at a time; a step's result is kept only while that key is
// being made, so no intermediate model ever exists whole.
class Evaluator {
 public:
  Evaluator(std::span<const Checkpoint* const> inputs, std::span<const MergeStep> steps)
      : inputs_(inputs), steps_(steps) {}

  torch::Tensor operator()(size_t node, Component c, const std::string& key, std::string_view ldm_key) {
    memo_.assign(inputs_.size() + steps_.size(), torch::Tensor());
    return value(node, c, key, ldm_key);
  }

 private:
  torch::Tensor value(size_t node, Component c, const std::string& key, std::string_view ldm_key) {
    if (memo_[node].defined()) return memo_[node];
    memo_[node] = node < inputs_.size() ? inputs_[node]->component(c).at(key)
                                        : merged(steps_[node - inputs_.size()], c, key, ldm_key);
    return memo_[node];
  }

  torch::Tensor merged(const MergeStep& step, Component c, const std::string& key, std::string_view ldm_key) {
    const MergeSpec& spec = step.spec;
    const ComponentMerge& choice = spec.component(c);
    auto operand = [&](size_t k) { return value(step.operands[k], c, key, ldm_key); };
    if (choice.from) return operand(*choice.from);
    const torch::Tensor a = operand(0);
    if (!a.is_floating_point()) return a;  // nothing to interpolate; SD 1.x has no such weight
    const double w = spec.alpha_for(c, ldm_key);
    // Exact shortcuts: α = 0 is A itself; α = 1 is B itself (SuperMerger copies B there too).
    if (w == 0.0) return a;
    const torch::Tensor b = operand(1);
    if (spec.method == MergeMethod::WeightedSum) {
      if (w == 1.0) return b;
      return a.to(torch::kFloat32).mul(1.0 - w).add_(b.to(torch::kFloat32).mul(w));
    }
    const torch::Tensor c3 = operand(2);
    return torch::sub(b.to(torch::kFloat32), c3.to(torch::kFloat32)).mul_(w).add_(a.to(torch::kFloat32));
  }

  std::span<const Checkpoint* const> inputs_;
  std::span<const MergeStep> steps_;
  std::vector<torch::Tensor> memo_;
};

}  // namespace

size_t merge_block_index(std::string_view key) {
  if (key.find("time_embed") != std::string_view::npos) return kFirstInputBlock;
  if (key.find(".out.") != std::string_view::npos) return kLastBlock;
  if (auto n = index_after(key, ".input_blocks."); n && *n < kInputBlocks) return kFirstInputBlock + *n;
  if (index_after(key, ".middle_block.")) return kMiddleBlock;
  if (auto n = index_after(key, ".output_blocks."); n && *n < kInputBlocks) return kFirstOutputBlock + *n;
  return 0;
}

std::string_view merge_block_name(size_t index) {
  if (index >= kBlockNames.size()) throw Error(fmt::format("no merge block {}", index));
  return kBlockNames[index];
}

const ComponentMerge& MergeSpec::component(Component c) const {
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

ComponentMerge& MergeSpec::component(Component c) {
  return const_cast<ComponentMerge&>(static_cast<const MergeSpec&>(*this).component(c));
}

double MergeSpec::alpha_for(Component c, std::string_view ldm_key) const {
  const ComponentMerge& own = component(c);
  if (c == Component::UNet && unet_blocks) {
    const size_t block = merge_block_index(ldm_key);
    if (block > 0) return (*unet_blocks)[block - 1];
    return base_alpha.value_or(own.alpha.value_or(alpha));
  }
  if (own.alpha) return *own.alpha;
  if (c != Component::UNet && base_alpha) return *base_alpha;
  return alpha;
}

bool MergeSpec::uses_alpha() const {
  for (auto c : kParts) {
    const ComponentMerge& own = component(c);
    if (own.from || own.alpha) continue;
    if (c == Component::UNet ? !unet_blocks : !base_alpha) return true;
  }
  return false;
}

Checkpoint merge_graph(std::span<const Checkpoint* const> inputs, std::span<const MergeStep> steps,
                       std::optional<torch::ScalarType> dtype) {
  if (inputs.empty() || steps.empty()) throw Error("a merge needs at least one input and one step");
  std::vector<NodeInfo> nodes;
  nodes.reserve(inputs.size() + steps.size());
  for (const Checkpoint* input : inputs) nodes.push_back(input_info(*input));
  for (const MergeStep& step : steps) nodes.push_back(step_info(step, nodes.size(), nodes));
  const NodeInfo& result = nodes.back();

  Checkpoint out;
  out.source = inputs.front()->source;
  out.layout = inputs.front()->layout;
  out.architecture = inputs.front()->architecture;
  out.configs = inputs.front()->configs;
  out.configs_complete = true;
  for (auto c : kParts) {
    const Checkpoint* config = result.config_source[part_index(c)];
    if (result.parts[part_index(c)].empty() || !config) continue;
    switch (c) {
      case Component::UNet:
        out.configs.unet = config->configs.unet;
        out.architecture = config->architecture;
        break;
      case Component::TextEncoder:
        out.configs.text_encoder = config->configs.text_encoder;
        break;
      case Component::VAE:
        out.configs.vae = config->configs.vae;
        break;
    }
    out.configs_complete = out.configs_complete && config->configs_complete;
  }
  // Checkpoint::extra (EMA copies, schedule buffers, logvar) is dropped: those tensors describe A
  // alone (A's EMA of A's training, A's noise schedule), so carrying them would pass off A's state as
  // the merged model's. The metadata is the caller's to write (merge_recipe records the merge).

  Evaluator evaluate(inputs, steps);
  const size_t last = nodes.size() - 1;
  for (auto c : kParts) {
    StateDict& part = out.component(c);
    for (const auto& [key, info] : result.parts[part_index(c)]) {
      const std::string ldm_key = diffusers_to_ldm(c, key);
      torch::Tensor t = evaluate(last, c, key, ldm_key);
      const torch::ScalarType target = dtype && at::isFloatingType(info.dtype) ? *dtype : info.dtype;
      if (t.scalar_type() != target) t = t.to(target);
      part.emplace(key, std::move(t));
    }
  }
  return out;
}

Checkpoint merge_checkpoints(std::span<const Checkpoint* const> inputs, const MergeSpec& spec,
                             std::optional<torch::ScalarType> dtype) {
  MergeStep step{"merge", spec, {}};
  for (size_t i = 0; i < inputs.size(); ++i) step.operands.push_back(i);
  return merge_graph(inputs, std::span<const MergeStep>(&step, 1), dtype);
}

Checkpoint weighted_sum(const Checkpoint& a, const Checkpoint& b, double alpha,
                        std::optional<torch::ScalarType> dtype) {
  MergeSpec spec;
  spec.method = MergeMethod::WeightedSum;
  spec.alpha = alpha;
  const std::array<const Checkpoint*, 2> inputs = {&a, &b};
  return merge_checkpoints(inputs, spec, dtype);
}

Checkpoint add_difference(const Checkpoint& a, const Checkpoint& b, const Checkpoint& c, double multiplier,
                          std::optional<torch::ScalarType> dtype) {
  MergeSpec spec;
  spec.method = MergeMethod::AddDifference;
  spec.alpha = multiplier;
  const std::array<const Checkpoint*, 3> inputs = {&a, &b, &c};
  return merge_checkpoints(inputs, spec, dtype);
}

}  // namespace kiln
