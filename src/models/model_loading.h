// Strict, name-for-name loading of state dicts into modules, and the three SD networks as one bundle.
#pragma once
#include <torch/torch.h>

#include <string>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/configs.h"
#include "models/unet.h"
#include "models/vae.h"

namespace kiln {

// Copies `dict` into the parameters and buffers of `module` (cast to their dtype and device).
// Every missing, unexpected or mis-shaped key is collected first and reported in ONE kiln::Error
// naming `source`; nothing is copied unless the whole dict fits, so no model is left half-loaded.
void load_state_dict(torch::nn::Module& module, const StateDict& dict, const std::string& source);

// Parameters and persistent buffers by name (views of the module's own tensors).
StateDict state_dict(const torch::nn::Module& module);

// The three networks of an SD 1.x checkpoint, fp32 on the CPU.
struct StableDiffusionModels {
  explicit StableDiffusionModels(const ModelConfigs& configs);
  ModelConfigs configs;
  CLIPTextModel text_encoder;
  UNet2DConditionModel unet;
  AutoencoderKL vae;
};

// Builds the networks the checkpoint's configs describe and loads its weights; every component
// must be present and complete.
StableDiffusionModels build_models(const Checkpoint& checkpoint);

// The networks' weights as a checkpoint (copies, detached from the modules), ready to write.
Checkpoint checkpoint_from_models(const StableDiffusionModels& models);

// Moves the three networks (shared handles: every copy of `models` sees the move) to `device`.
void to_device(const StableDiffusionModels& models, torch::Device device);

}  // namespace kiln
