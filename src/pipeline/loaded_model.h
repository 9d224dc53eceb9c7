// A checkpoint ready to generate with: networks, tokenizer and the identity A1111 records.
#pragma once
#include <filesystem>
#include <optional>

#include "models/model_loading.h"
#include "pipeline/a1111_parameters.h"
#include "text/clip_tokenizer.h"

namespace kiln {

struct LoadedModel {
  std::filesystem::path path;
  StableDiffusionModels models;
  CLIPTokenizer tokenizer;
  ModelIdentity identity;
  NoiseScheduleConfig scheduler;  // the checkpoint's (io/checkpoint.h): spacing, prediction, β
};

// A single-file checkpoint or a diffusers folder (its tokenizer/ when present, else kiln's
// embedded CLIP vocabulary). A missing, empty or incomplete model throws kiln::Error naming it.
// `hash` false skips the SHA-256 of the file (seconds for a 2 GB file).
LoadedModel load_model(const std::filesystem::path& path,
                       const std::optional<std::filesystem::path>& config = std::nullopt, bool hash = true);

}  // namespace kiln
