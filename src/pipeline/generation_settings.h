// What one txt2img request asks for: the settings `kiln sample`, prompt files and grids share.
#pragma once
#include <cstdint>
#include <string>

namespace kiln {

struct GenerationSettings {
  std::string prompt;
  std::string negative;
  std::string sampler = "dpmpp_2m_karras";  // AUTOMATIC1111's default (DPM++ 2M, Karras schedule)
  std::string spacing;     // empty: the model's scheduler config, else each sampler's diffusers default
  std::string prediction;  // empty: the model's (scheduler config); epsilon | v_prediction
  bool karras = false;                      // Karras σ for samplers that do not say so in their name
  int64_t steps = 20;
  double cfg = 7.0;  // classifier-free guidance scale; <= 1 skips the unconditional pass (diffusers)
  uint64_t seed = 0;
  int64_t width = 512;
  int64_t height = 512;
  int64_t clip_skip = 1;
  int64_t batch = 1;  // images per prompt; image b uses seed + b
};

// Throws kiln::Error naming the first bad setting (size not a positive multiple of 8, no steps, ...).
void validate(const GenerationSettings& settings);

}  // namespace kiln
