// SD 1.x checkpoints in either layout — the original LDM single safetensors file or a diffusers
// folder — read into one in-memory form (diffusers tensor names, configs) and written back out.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <optional>
#include <string>

#include "diffusion/noise_schedule.h"
#include "io/key_map.h"
#include "io/safetensors.h"
#include "models/configs.h"

namespace kiln {

enum class CheckpointLayout { Ldm, Diffusers };

std::string_view layout_name(CheckpointLayout layout);   // "ldm" | "diffusers"
CheckpointLayout parse_layout(const std::string& name);  // throws kiln::Error for others
torch::ScalarType parse_dtype(const std::string& name);  // fp32 | fp16 | bf16

// Layout of an existing path: a .safetensors file with LDM prefixes is Ldm, a folder with
// model_index.json or unet/ text_encoder/ vae/ is Diffusers. Anything else — a lone diffusers
// component folder or weights file, a LoRA, a pickled .ckpt, SD 2.x / SDXL files — throws a
// kiln::Error naming the path and saying what it looks like.
CheckpointLayout detect_layout(const std::filesystem::path& path);

// The message (after "<path>: ") when head counts are needed but only shapes are known.
inline constexpr std::string_view kHeadCountsUnknown =
    "cannot infer attention head counts for a non-SD-1.5 architecture from shapes; pass --config DIR";

// SAI model-spec metadata key of an LDM file's prediction type: "v" or "epsilon".
inline constexpr std::string_view kPredictionMetadataKey = "modelspec.prediction_type";

struct Checkpoint {
  std::filesystem::path source;  // where it was read from (for messages)
  CheckpointLayout layout = CheckpointLayout::Ldm;
  ModelConfigs configs;
  // False when some component's config came from tensor shapes that do not settle its attention
  // head counts (widths other than SD 1.5's, no config.json, no --config). Reading, inspecting and
  // LDM -> LDM conversion work then; building networks and writing a diffusers folder need the
  // head counts and throw kHeadCountsUnknown.
  bool configs_complete = true;
  std::string architecture;  // "sd15", or "sd1x-custom ..." for other widths
  // Tensors as stored (dtype kept; zero-copy read-only views of the mapped files), diffusers
  // names. An empty dict means the component is absent (e.g. a UNet-only file).
  StateDict unet, text_encoder, vae;
  // LDM-file tensors that belong to no component, under their LDM names: the 12 LDM schedule
  // buffers (betas, alphas_cumprod, ...), logvar, model_ema.* (EMA copy of the UNet with dots
  // removed from its names, decay, num_updates) and any other top-level tensor. Kept so that
  // LDM -> LDM conversion loses nothing; the diffusers layout has no place for them and drops them.
  // position_ids (arange(77)) is not kept: it is regenerated when writing an LDM file.
  StateDict extra;
  Metadata metadata;  // the LDM file's __metadata__, or the diffusers UNet file's
  // How to sample it: a folder's scheduler/scheduler_config.json (then --config's), and for an LDM
  // file the SAI model-spec key modelspec.prediction_type ("v" | "epsilon") that kohya and kiln write.
  NoiseScheduleConfig scheduler;

  const StateDict& component(Component c) const;
  StateDict& component(Component c);
  bool has(Component c) const { return !component(c).empty(); }
};

// Reads a checkpoint of either layout. Configs: a diffusers folder's config.json files; otherwise
// inferred from tensor shapes (SD 1.5's head counts when the widths are SD 1.5's, see
// configs_complete). `config` (a diffusers folder or one component config.json) overrides both;
// whatever the configs say must agree with the tensor shapes. Other architectures (SD 2.x, SDXL),
// pickles, unknown tensors and unreadable files throw kiln::Error naming the file and the problem.
Checkpoint read_checkpoint(const std::filesystem::path& path,
                           const std::optional<std::filesystem::path>& config = std::nullopt);

// Writes `checkpoint` in `layout`, floating tensors cast to `dtype` when given (others as stored),
// built under a temporary name and renamed into place. Ldm: one .safetensors file (components
// under their LDM prefixes, position_ids, the extra tensors, metadata). Diffusers: a folder with
// model_index.json, scheduler/ (SD 1.5's PNDM config), tokenizer/ (kiln's embedded CLIP vocabulary),
// and <component>/config.json + weights under the standard file names. Refuses to replace an
// existing file with a folder (or the reverse) or a folder that is not a diffusers model.
void write_checkpoint(const Checkpoint& checkpoint, const std::filesystem::path& path,
                      CheckpointLayout layout, std::optional<torch::ScalarType> dtype = std::nullopt);

// The checkpoint as one LDM-named state dict, as write_checkpoint(Ldm) stores it before any dtype
// cast: components under their prefixes (VAE attention as 1x1 convs), position_ids, extra tensors.
StateDict ldm_state_dict(const Checkpoint& checkpoint);

// A component's weights inside a diffusers folder, relative to it
// ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
// "vae/diffusion_pytorch_model.safetensors").
std::filesystem::path diffusers_weights_file(Component c);

// Configs implied by the tensor shapes of the components present (diffusers names); absent
// components keep SD 1.5's. Head counts are SD 1.5's; `complete` says whether every present
// component has SD 1.5's widths, the only case where those head counts are known to be right.
ModelConfigs infer_configs(const Checkpoint& checkpoint, bool* complete);

}  // namespace kiln
