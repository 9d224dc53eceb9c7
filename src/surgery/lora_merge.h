// Using LoRA files: merging them into a checkpoint, applying them to loaded networks for sampling,
// and extracting one from a fine-tuned / base checkpoint pair (specs §7.1).
#pragma once
#include <torch/types.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "io/checkpoint.h"
#include "models/model_loading.h"
#include "surgery/lora.h"

namespace kiln {

// ΔW = multiplier · (alpha / rank) · (up @ down) in float32, shaped like the target weight
// (`weight_shape`): the product of the 2-D views for Linear, 1x1 and kxk convs alike.
torch::Tensor lora_delta(const LoraModule& module, at::IntArrayRef weight_shape, double multiplier);

// W += ΔW for every module, computed in float32 and stored back in each weight's dtype.
// `text_encoder_multiplier` NAN: the same as `multiplier` (A1111's te / unet multipliers otherwise).
// A module whose weight the checkpoint lacks or shapes differently throws kiln::Error.
void merge_lora(Checkpoint& checkpoint, const LoraFile& lora, double multiplier,
                double text_encoder_multiplier = NAN);

// The same update on the loaded networks' parameters, in place, for sampling without writing a
// merged file. Undo by applying again with -multiplier (up to float rounding).
void apply_lora(StableDiffusionModels& models, const LoraFile& lora, double multiplier,
                double text_encoder_multiplier = NAN);

// A rank-`rank` LoRA approximating tuned - base on kohya's default targets (is_kohya_default_target)
// by truncated SVD of each ΔW (convs flattened to [out, in·kh·kw]): up = U·√S, down = √S·Vᵀ,
// alpha = rank (scale 1). Modules whose ΔW is exactly zero are skipped; a component missing from
// either checkpoint is skipped. `retained_energy` (optional) gets, per returned module,
// Σ top-r σ² / Σ σ², i.e. 1 − ‖ΔW − ΔW_r‖² / ‖ΔW‖². Architectures that differ throw kiln::Error.
LoraFile extract_lora(const Checkpoint& tuned, const Checkpoint& base, int64_t rank,
                      std::vector<double>* retained_energy = nullptr);

}  // namespace kiln
