// How far a fine-tuned text encoder moved what it tells the UNet: for the same prompts, the
// relative change of the conditioning (the token states the UNet cross-attends to) from the base
// model's. An over-trained text encoder stops following the prompt because this moves; a frozen
// one gives exactly 0. Model-agnostic: any CLIP text encoder kiln loads.
#pragma once
#include <string>
#include <vector>

#include <torch/types.h>

#include "pipeline/txt2img.h"

namespace kiln {

// The conditioning of each prompt as `txt2img` computes it ([1, 77·chunks, hidden], on the CPU).
std::vector<torch::Tensor> encode_prompts(Txt2Img& txt2img, const std::vector<std::string>& prompts,
                                          int64_t clip_skip);

// Mean over prompts of ‖E − E₀‖ / ‖E₀‖ over every token state except each 77-token chunk's first:
// the start token attends only to itself, so its state is the same for every prompt and says nothing
// about following one. Throws kiln::Error when the lists differ in length or shape.
double prompt_drift(const std::vector<torch::Tensor>& now, const std::vector<torch::Tensor>& base);

}  // namespace kiln
