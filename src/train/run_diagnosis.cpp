#include "train/run_diagnosis.h"

#include <algorithm>

#include "train/run_config.h"
#include "util/error.h"

namespace kiln {

namespace fs = std::filesystem;

DiagnosisRequest diagnosis_request_for_run(const fs::path& run_dir) {
  const auto config = read_run_config(run_dir / "run.toml");
  if (config.lora.enabled)
    throw Error(run_dir.string() + ": a LoRA run; merge its LoRA into checkpoints to diagnose them");
  DiagnosisRequest r;
  r.base = config.model.checkpoint;
  if (!config.model.config.empty()) r.config = config.model.config;
  for (const auto& entry : fs::directory_iterator(run_dir / "checkpoints")) {
    const auto name = entry.path().filename().string();
    if (name.ends_with(".state.safetensors") || name.ends_with("-ema.safetensors") || name.ends_with("-ema"))
      continue;
    if (entry.path().extension() == ".safetensors" || entry.is_directory())
      r.checkpoints.push_back(entry.path());
  }
  std::sort(r.checkpoints.begin(), r.checkpoints.end());
  if (r.checkpoints.empty()) throw_file_error(run_dir, "holds no checkpoints to diagnose");
  r.settings.sampler = config.samples.sampler;
  r.settings.steps = config.samples.steps;
  r.settings.cfg = config.samples.cfg;
  r.settings.width = config.samples.width;
  r.settings.height = config.samples.height;
  r.settings.clip_skip = config.text_encoder.clip_skip;
  r.activation_phrase = config.data.activation_phrase;
  for (const auto& folder : config.data.folders)
    if (fs::is_directory(folder.path)) r.training_images.emplace_back(folder.path);
  return r;
}

}  // namespace kiln
