// Gradient checkpointing: run a block without keeping its activations for backward, and recompute
// them when backward reaches the block. Trades one extra forward per block for the activation
// memory that dominates training at 512×512. Blocks must be deterministic (SD's have no dropout).
#pragma once
#include <torch/types.h>

#include <functional>
#include <vector>

namespace kiln {

using CheckpointedBlock = std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs)>;

// `block(inputs)` with checkpointing when gradients are being recorded, plainly otherwise. Gradients
// reach the inputs that require them and every parameter the block uses, as without checkpointing.
torch::Tensor checkpointed(CheckpointedBlock block, const std::vector<torch::Tensor>& inputs);

}  // namespace kiln
