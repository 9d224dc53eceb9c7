#include "pipeline/txt2img.h"

#include <torch/torch.h>

#include <cstring>

#include "diffusion/prediction.h"
#include "diffusion/sampler.h"
#include "diffusion/seeded_noise.h"
#include "models/device.h"

namespace kiln {

Txt2Img::Txt2Img(const StableDiffusionModels& models, CLIPTokenizer tokenizer, NoiseSchedule schedule)
    : models_(models), tokenizer_(std::move(tokenizer)), schedule_(std::move(schedule)) {}

Txt2Img::Txt2Img(const LoadedModel& model)
    : Txt2Img(model.models, model.tokenizer, NoiseSchedule(model.scheduler)) {}

torch::Tensor Txt2Img::encode_prompt(const std::string& prompt, int64_t clip_skip) {
  PromptEncoder encoder(models_.text_encoder, tokenizer_, {clip_skip});
  return encoder.encode(prompt);
}

GenerationSettings Txt2Img::resolved(GenerationSettings s) const {
  if (s.spacing.empty()) s.spacing = schedule_.config.timestep_spacing;
  if (s.prediction.empty()) s.prediction = prediction_name(schedule_.config.prediction);
  return s;
}

torch::Tensor Txt2Img::sample_latents(const GenerationSettings& settings, const StepCallback& on_step) {
  validate(settings);
  const GenerationSettings s = resolved(settings);
  const bool v_prediction = parse_prediction(s.prediction) == Prediction::V;
  torch::NoGradGuard no_grad;
  models_.unet->eval();
  models_.text_encoder->eval();
  auto sampler = make_sampler(s.sampler, schedule_, {s.steps, s.spacing, s.karras});
  const bool guided = s.cfg > 1.0;  // diffusers skips the unconditional pass at guidance <= 1
  auto cond = encode_prompt(s.prompt, s.clip_skip).expand({s.batch, -1, -1});
  torch::Tensor uncond;
  if (guided) uncond = encode_prompt(s.negative, s.clip_skip).expand({s.batch, -1, -1});
  // One UNet call for both halves when their contexts have the same length; cross-attention
  // accepts any length, so a longer prompt than negative (or the reverse) runs as two calls.
  const bool one_call = guided && uncond.size(1) == cond.size(1);
  const auto context = one_call ? torch::cat({uncond, cond}) : cond;

  SeededNoise noise(s.seed, s.batch);
  const int64_t channels = models_.unet->config().in_channels;
  const std::vector<int64_t> latent_shape{channels, s.height / 8, s.width / 8};
  const auto device = module_device(*models_.unet);
  auto x = noise.randn(latent_shape).to(device) * sampler->init_noise_sigma();
  const auto total = static_cast<int64_t>(sampler->steps());
  if (on_step) on_step(0, total);
  for (size_t i = 0; i < sampler->steps(); ++i) {
    const auto t = torch::full({x.size(0)}, sampler->timesteps()[i], torch::TensorOptions().dtype(torch::kFloat32).device(device));
    torch::Tensor eps;
    if (!guided) {
      eps = models_.unet->forward(sampler->scale_model_input(x, i), t, cond);
    } else if (one_call) {
      const auto input = sampler->scale_model_input(torch::cat({x, x}), i);
      const auto out = models_.unet->forward(input, torch::cat({t, t}), context).chunk(2);
      eps = out[0] + s.cfg * (out[1] - out[0]);
    } else {
      const auto input = sampler->scale_model_input(x, i);
      const auto out_uncond = models_.unet->forward(input, t, uncond);
      const auto out_cond = models_.unet->forward(input, t, cond);
      eps = out_uncond + s.cfg * (out_cond - out_uncond);
    }
    // Guidance is linear and so is the conversion: v is guided first, as diffusers does.
    if (v_prediction) eps = epsilon_from_v(eps, sampler->scale_model_input(x, i), sampler->model_sigma(i));
    torch::Tensor step_noise;
    if (sampler->uses_noise()) step_noise = noise.randn(latent_shape).to(device);
    x = sampler->step(eps, i, x, step_noise);
    if (on_step) on_step(static_cast<int64_t>(i) + 1, total);
  }
  return x;
}

std::vector<Image> Txt2Img::decode(const torch::Tensor& latents) {
  torch::NoGradGuard no_grad;
  models_.vae->eval();
  std::vector<Image> images;
  for (int64_t b = 0; b < latents.size(0); ++b) {
    const auto latent = latents.slice(0, b, b + 1).to(module_device(*models_.vae), module_dtype(*models_.vae));
    auto pixels = models_.vae->decode(latent / models_.vae->scaling_factor());
    images.push_back(image_from_tensor(pixels[0]));
  }
  return images;
}

std::vector<Image> Txt2Img::generate(const GenerationSettings& settings, const StepCallback& on_step) {
  return decode(sample_latents(settings, on_step));
}

Image image_from_tensor(const torch::Tensor& chw) {
  TORCH_CHECK(chw.dim() == 3 && chw.size(0) == 3, "expected a [3, H, W] image, got ", chw.sizes());
  auto bytes = (chw.detach().to(torch::kFloat32).cpu() / 2 + 0.5)
                   .clamp(0, 1)
                   .mul(255)
                   .round()
                   .to(torch::kUInt8)
                   .permute({1, 2, 0})
                   .contiguous();
  Image image(static_cast<int>(chw.size(2)), static_cast<int>(chw.size(1)));
  std::memcpy(image.pixels.data(), bytes.data_ptr<uint8_t>(), image.pixels.size());
  return image;
}

}  // namespace kiln
