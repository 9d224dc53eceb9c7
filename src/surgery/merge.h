// Checkpoint merging as fine-tuners do it with AUTOMATIC1111's merger and SuperMerger: weighted sum,
// add difference, SuperMerger block weights for the UNet, and whole components taken from one input.
// Every component (unet, text_encoder, vae) merges tensor by tensor under its diffusers names, so
// inputs of either layout mix; see docs/specs.md §8.
#pragma once
#include <torch/types.h>

#include <array>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/checkpoint.h"

namespace kiln {

enum class MergeMethod { WeightedSum, AddDifference };

// SuperMerger's SD 1.x block IDs: BASE (text encoder, VAE), IN00..IN11, M00, OUT00..OUT11.
inline constexpr size_t kMergeBlockCount = 26;
// The user's UNet block weights: one per ID after BASE.
inline constexpr size_t kUNetBlockWeightCount = kMergeBlockCount - 1;
using UNetBlockWeights = std::array<double, kUNetBlockWeightCount>;

// SuperMerger's blockfromkey on a full LDM key: the index into BASE, IN00, ..., OUT11 (0 = BASE).
size_t merge_block_index(std::string_view ldm_key);
std::string_view merge_block_name(size_t index);  // "BASE", "IN00", ..., "M00", ..., "OUT11"

// How one component is made.
struct ComponentMerge {
  std::optional<double> alpha;  // overrides MergeSpec::alpha for this component
  std::optional<size_t> from;   // copy the component from this operand bit-exactly instead of merging
};

// One merge: weighted sum θ = (1−α)·A + α·B or add difference θ = A + α·(B − C), with α chosen per key.
struct MergeSpec {
  MergeMethod method = MergeMethod::WeightedSum;
  double alpha = 0.5;  // weighted sum: B's share; add difference: the multiplier
  ComponentMerge unet, text_encoder, vae;
  // SuperMerger block weights: each UNet key takes the weight of its block (IN00..OUT11); BASE keys
  // (text encoder, VAE) take base_alpha. A component's own alpha still wins for the text encoder and VAE.
  std::optional<UNetBlockWeights> unet_blocks;
  std::optional<double> base_alpha;

  const ComponentMerge& component(Component c) const;
  ComponentMerge& component(Component c);
  // The α of one tensor, by component and full LDM key.
  double alpha_for(Component c, std::string_view ldm_key) const;
  // Whether some merged component falls back to `alpha` (false when block weights, base_alpha,
  // component alphas and copies settle every tensor).
  bool uses_alpha() const;
};

// A node of a merge graph. Nodes 0..inputs-1 are the input checkpoints; step i is node inputs+i and
// reads only earlier nodes. `operands` are node indices: A, B (and C for add difference), then any other
// node a component is copied from; ComponentMerge::from indexes `operands`.
struct MergeStep {
  std::string name;  // for messages
  MergeSpec spec;
  std::vector<size_t> operands;
};

// Runs the graph and returns the last step's result. Memory stays near one output model: keys are
// visited one at a time and each step's tensor for that key is made from the inputs' mapped tensors,
// in float32, so intermediate steps never exist whole (and never round to a narrower dtype).
//
// The output tensor's dtype is `dtype` when given (floating tensors), otherwise that of the tensor it
// comes from: A's for a merge (following A through earlier steps), the source's for a copy. Configs
// come from the same sources. Refused with kiln::Error: inputs of different architectures (a key or
// a shape differs: the message names the first such key and both files) and a key missing in B or C.
// Non-component tensors (Checkpoint::extra) are dropped and the metadata is left empty (see merge.cpp).
Checkpoint merge_graph(std::span<const Checkpoint* const> inputs, std::span<const MergeStep> steps,
                       std::optional<torch::ScalarType> dtype = std::nullopt);

// One step over `inputs` (A, B[, C], ...); ComponentMerge::from indexes `inputs`.
Checkpoint merge_checkpoints(std::span<const Checkpoint* const> inputs, const MergeSpec& spec,
                             std::optional<torch::ScalarType> dtype = std::nullopt);

// (1 − α)·A + α·B on every component.
Checkpoint weighted_sum(const Checkpoint& a, const Checkpoint& b, double alpha,
                        std::optional<torch::ScalarType> dtype = std::nullopt);
// A + m·(B − C) on every component.
Checkpoint add_difference(const Checkpoint& a, const Checkpoint& b, const Checkpoint& c, double multiplier,
                          std::optional<torch::ScalarType> dtype = std::nullopt);

}  // namespace kiln
