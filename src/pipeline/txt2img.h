// Text to image with any kiln sampler: prompt conditioning (A1111 emphasis, long prompts, CLIP
// skip), seeded initial noise, classifier-free guidance, VAE decode. On the golden tiny model it
// reproduces diffusers' StableDiffusionPipeline step for step.
#pragma once
#include <torch/types.h>

#include <functional>
#include <vector>

#include "diffusion/noise_schedule.h"
#include "image/image.h"
#include "models/model_loading.h"
#include "pipeline/generation_settings.h"
#include "pipeline/loaded_model.h"
#include "pipeline/prompt_encoder.h"
#include "text/clip_tokenizer.h"

namespace kiln {

// Called with done = 0 before the first model evaluation and after each one: `done` of `total`.
using StepCallback = std::function<void(int64_t done, int64_t total)>;

class Txt2Img {
 public:
  // The models are shared, not copied (libtorch modules are handles).
  Txt2Img(const StableDiffusionModels& models, CLIPTokenizer tokenizer,
          NoiseSchedule schedule = NoiseSchedule());
  // A loaded checkpoint, sampled as its own scheduler config says (spacing, prediction, β).
  explicit Txt2Img(const LoadedModel& model);

  // Final latents [batch, 4, height/8, width/8] (unscaled by the VAE factor, as the sampler leaves
  // them). Throws kiln::Error for invalid settings before any work.
  torch::Tensor sample_latents(const GenerationSettings& settings, const StepCallback& on_step = {});
  // Decoded pictures, one per image of the batch; decoded one at a time to bound memory.
  std::vector<Image> decode(const torch::Tensor& latents);
  std::vector<Image> generate(const GenerationSettings& settings, const StepCallback& on_step = {});

  // `settings` with what the model's scheduler config decides filled in where they leave it open
  // (spacing, prediction): what a picture's parameters should record.
  GenerationSettings resolved(GenerationSettings settings) const;

  // The conditioning `sample_latents` uses: [1, 77·chunks, hidden].
  torch::Tensor encode_prompt(const std::string& prompt, int64_t clip_skip);

 private:
  StableDiffusionModels models_;
  CLIPTokenizer tokenizer_;
  NoiseSchedule schedule_;
};

// A decoded image tensor [3, H, W] in about [-1, 1] as 8-bit RGB, rounded as diffusers does:
// round(clamp(x / 2 + 0.5, 0, 1) · 255).
Image image_from_tensor(const torch::Tensor& chw);

}  // namespace kiln
