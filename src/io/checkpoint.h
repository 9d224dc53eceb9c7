// SD 1.x checkpoints in either layout — the original LDM single safetensors file or a diffusers
// folder — read into one in-memory form (diffusers tensor names, configs) and written back out.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <optional>
#include <string>

#include "io/key_map.h"
#include "io/safetensors.h"
#include "models/configs.h"

namespace kiln {

enum class CheckpointLayout { Ldm, Diffusers };

std::string_view layout_name(CheckpointLayout layout);              // "ldm" | "diffusers"
CheckpointLayout parse_layout(const std::string& name);              // throws kiln::Error for others
torch::ScalarType parse_dtype(const std::string& name);              // fp32 | fp16 | bf16
// Layout of an existing path, or a kiln::Error naming it and saying why it is neither.
CheckpointLayout detect_layout(const std::filesystem::path& path);

struct Checkpoint {
  std::filesystem::path source;  // where it was read from (for messages)
  CheckpointLayout layout = CheckpointLayout::Ldm;
  ModelConfigs configs;
  // False when the configs were inferred from shapes that do not settle the attention head counts
  // (any architecture but SD 1.5's widths, without --config): networks cannot be built then.
  bool configs_complete = true;
  std::string architecture;  // "sd15", or a description such as "custom (from --config)"
  // Tensors as stored (dtype kept; zero-copy views of the mapped files), diffusers names.
  StateDict unet, text_encoder, vae;
  // LDM tensors of no component (schedule buffers, EMA weights ...), under their LDM names; kept by
  // LDM -> LDM conversion, dropped by the diffusers layout, which has no place for them.
  StateDict extra;
  Metadata metadata;

  const StateDict& component(Component c) const;
  StateDict& component(Component c);
};

// Reads a checkpoint of either layout. `config` (a diffusers folder or component config.json)
// overrides what the checkpoint says or what its shapes imply. Other architectures (SD 2.x, SDXL)
// and unreadable files throw kiln::Error naming the file and the problem.
Checkpoint read_checkpoint(const std::filesystem::path& path,
                           const std::optional<std::filesystem::path>& config = std::nullopt);

// Writes `checkpoint` in `layout`, floating tensors cast to `dtype` when given (others as stored),
// through a temporary name renamed into place: a single .safetensors file for Ldm, a folder for Diffusers.
void write_checkpoint(const Checkpoint& checkpoint, const std::filesystem::path& path, CheckpointLayout layout,
                      std::optional<torch::ScalarType> dtype = std::nullopt);

// Configs implied by tensor shapes (diffusers names). Head counts are SD 1.5's; `complete` says
// whether the widths are SD 1.5's, the only case where those head counts are known to be right.
ModelConfigs infer_configs(const Checkpoint& checkpoint, bool* complete);

}  // namespace kiln
