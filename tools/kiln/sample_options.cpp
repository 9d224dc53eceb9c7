#include "sample_options.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>
#include <random>

#include "diffusion/sampler.h"
#include "models/device.h"
#include "surgery/lora.h"
#include "surgery/lora_merge.h"

namespace kiln::cli {

GenerationSettings SampleOptions::settings() const {
  GenerationSettings s;
  s.negative = negative;
  s.sampler = sampler;
  s.spacing = spacing;
  s.prediction = prediction;
  s.karras = karras;
  s.steps = steps;
  s.cfg = cfg;
  s.seed = seed >= 0 ? static_cast<uint64_t>(seed) : std::random_device{}() % 4294967295u;
  if (seed < 0) std::cerr << "seed " << s.seed << "\n";
  s.width = width;
  s.height = height;
  s.clip_skip = clip_skip;
  s.batch = batch;
  return s;
}

LoadedModel SampleOptions::load(const std::string& model_path) const {
  std::optional<std::filesystem::path> config_path;
  if (!config.empty()) config_path = config;
  auto loaded = load_model(model_path.empty() ? model : model_path, config_path);
  if (!loras.empty()) {
    const LoraTargets targets = lora_targets(loaded.models);
    for (const auto& text : loras) {
      const auto spec = parse_lora_spec(text);
      apply_lora(loaded.models, read_lora(spec.path, targets), spec.ratio);
      std::cerr << fmt::format("applied LoRA {} at {}\n", spec.path.string(), spec.ratio);
    }
  }
  const AttentionOptions options{parse_attention_kernel(attention)};
  loaded.models.unet->set_attention(options);
  loaded.models.vae->set_attention(options);
  to_device(loaded.models, parse_device(device));
  return loaded;
}

void add_sample_options(CLI::App& cmd, SampleOptions& o, bool require_model) {
  if (require_model)
    cmd.add_option("--model,-m", o.model, "checkpoint: .safetensors file or diffusers folder")->required();
  cmd.add_option("--config", o.config, "diffusers model folder or config.json for a non-SD-1.5 architecture");
  cmd.add_option("--negative,-n", o.negative, "negative prompt");
  cmd.add_option("--sampler", o.sampler, fmt::format("{}", fmt::join(sampler_names(), ", ")))
      ->capture_default_str();
  cmd.add_option("--spacing", o.spacing,
                 "timestep spacing: leading, trailing, linspace (default: the model's scheduler config, else as diffusers)");
  cmd.add_option("--prediction", o.prediction,
                 "what the UNet predicts: epsilon or v_prediction (default: the model's scheduler config or metadata)");
  cmd.add_flag("--karras", o.karras, "Karras sigmas for euler, euler_a, heun, dpmpp_2m");
  cmd.add_option("--steps", o.steps, "sampling steps")->capture_default_str();
  cmd.add_option("--cfg", o.cfg, "classifier-free guidance scale")->capture_default_str();
  cmd.add_option("--seed", o.seed, "seed of the first image (image b uses seed + b); -1: random")
      ->capture_default_str();
  cmd.add_option("--width,-W", o.width, "image width (multiple of 8)")->capture_default_str();
  cmd.add_option("--height,-H", o.height, "image height (multiple of 8)")->capture_default_str();
  cmd.add_option("--clip-skip", o.clip_skip, "CLIP skip (A1111: 1 = last layer, 2 = penultimate)")
      ->capture_default_str();
  cmd.add_option("--batch", o.batch, "images per prompt")->capture_default_str();
  cmd.add_option("--attention", o.attention, "auto, plain, chunked (less memory), onednn (fast on CPU, libtorch 1.x) or fused (libtorch >= 2)")
      ->capture_default_str();
  cmd.add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
}

}  // namespace kiln::cli
