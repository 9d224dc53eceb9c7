// A training run's settings: plain structs with defaults, read from a TOML run file with
// `--set section.key=value` overrides, and written back (resolved, every key) beside the run so a
// run can be repeated exactly. Each key is documented in docs/run-file.md.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "lab/burn_signs.h"

namespace kiln {

struct ModelSection {
  std::string checkpoint;              // base model: .safetensors or diffusers folder
  std::string config;                  // diffusers folder / config.json for non-SD-1.5 architectures
  std::string prediction = "epsilon";  // epsilon | v_prediction
};

struct DataFolder {
  std::string path;
  int64_t repeats = 1;
};

struct DataSection {
  std::vector<DataFolder> folders;
  int64_t resolution = 512;  // bucket area = resolution²
  bool buckets = true;       // aspect-ratio buckets; false: every image cropped to resolution²
  int64_t min_bucket = 256, max_bucket = 1024, bucket_step = 64;
  std::string crop = "center";  // center | random
  bool random_flip = false;
  std::vector<std::string> caption_extensions{".txt", ".caption"};
  std::string activation_phrase;
  bool shuffle_tags = false;
  int64_t keep_tags = 0;
  std::vector<std::string> tags_to_start, tags_to_end;
  double caption_dropout = 0.0;
  bool cache_latents = true;
  bool skip_bad_files = false;
  int64_t batch_size = 1;
  int64_t gradient_accumulation = 1;
};

// One trained network's settings; text_encoder and unet each have their own.
struct PartSection {
  bool train = true;
  double lr = 1e-6;
  std::string optimizer = "adamw";  // adamw | adamw8bit | lion | sgd | dadapt_adam | prodigy
  double weight_decay = 1e-2;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t block_size = 256;  // adamw8bit: elements per quantisation block (bitsandbytes >= 0.44: 256)
  std::string schedule = "constant";  // constant | linear | cosine | cosine_with_restarts | polynomial
  int64_t warmup_steps = 0;
  int64_t schedule_cycles = 1;          // cosine_with_restarts
  double schedule_power = 1.0;          // polynomial
  double schedule_end_lr = 1e-7;        // polynomial
  double max_grad_norm = 1.0;           // 0: no clipping
  bool gradient_checkpointing = false;  // recompute blocks in backward: less memory, ~30 % more time
};

struct TextEncoderSection : PartSection {
  int64_t clip_skip = 1;
  bool freeze_embeddings = false;
  int64_t freeze_layers = 0;  // the first N encoder layers
  bool freeze_final_layer_norm = false;
};

struct NoiseSection {
  double offset = 0.0;  // offset noise strength
  int64_t min_timestep = 0, max_timestep = 1000;
};

struct LossSection {
  double min_snr_gamma = 0.0;  // 0: plain MSE
};

struct TrainingSection {
  uint64_t seed = 555;
  // A loss or gradient that is NaN or infinite: "stop" the run at once (nothing is saved, the last
  // checkpoint stays as it was) or "skip" that optimizer step and go on.
  std::string on_nan = "stop";
  // Forward passes under autocast at this precision ("no" | "bf16" | "fp16"); weights that train and
  // the optimizer's maths stay fp32, frozen parts are stored at this precision. fp16 adds dynamic
  // loss scaling and needs a CUDA device.
  std::string mixed_precision = "no";
  int64_t epochs = 10;
  double ema_decay =
      0.0;  // 0: off; e.g. 0.999: checkpoints of the weights' moving average beside the raw ones
};

struct ValidationSection {
  std::string folder;           // a separate validation folder, or
  double split = 0.0;           // a seeded fraction of the training images held out
  int64_t every_epochs = 1;     // 0: only before training and after the last epoch
  int64_t stabilize_items = 8;  // training items for the stabilised training loss (0: off)
  int64_t timesteps_per_item = 4;
};

struct CheckpointSection {
  int64_t every_epochs = 0;  // 0: only the listed epochs and the end
  int64_t from_epoch = 0;
  std::vector<int64_t> epochs;
  std::string dtype = "fp16";  // fp16 | fp32 | bf16
  std::string layout = "ldm";  // ldm | diffusers
  // Resume states (.state.safetensors, several times a checkpoint's size) kept: the newest N; 0: all.
  int64_t keep_last_states = 0;
  // A save that fails (disk full, I/O error) is tried again this many times, this many seconds apart,
  // before the run stops; the previous checkpoint is intact either way.
  int64_t save_retries = 0;
  double save_retry_seconds = 60.0;
};

struct SamplesSection {
  std::string prompts;  // prompts file (.txt/.json/.toml); empty: no samples
  std::string sampler = "dpmpp_2m_karras";
  int64_t steps = 20;
  double cfg = 7.0;
  int64_t width = 512, height = 512;
  uint64_t seed = 1;  // the seed of every prompt that does not set its own
};

struct LoraSection {
  bool enabled = false;  // train a LoRA (kohya format) instead of the full weights
  int64_t rank = 4;
  double alpha = 1.0;
  std::vector<std::string> targets{"unet_attention", "unet_proj", "unet_ff", "text_encoder"};
  double rank_dropout = 0.0;
  double module_dropout = 0.0;
};

struct LoggingSection {
  bool tensorboard = true;
  int64_t every_steps = 1;
};

// The burn watch at every checkpoint: the cheap signs (weight drift; change, style bleed and
// statistics of the samples the run draws, against the base model's samples drawn before the first
// step; the text encoder's drift on the sample prompts) compared with `kiln diagnose`'s thresholds.
struct DiagnoseSection {
  bool warn = true;              // print a warning naming the part when a sign crosses
  bool stop_when_burnt = false;  // stop the run after the checkpoint where one does
  DiagnosisThresholds thresholds;  // `kiln diagnose`'s defaults
};

struct RunConfig {
  ModelSection model;
  DataSection data;
  TextEncoderSection text_encoder;
  PartSection unet;
  NoiseSection noise;
  LossSection loss;
  TrainingSection training;
  ValidationSection validation;
  CheckpointSection checkpoints;
  SamplesSection samples;
  LoraSection lora;
  LoggingSection logging;
  DiagnoseSection diagnose;
};

// Reads `path` (relative paths inside it are resolved against its folder), applies each
// "section.key=value" override (value in TOML syntax; a bare word is a string), and checks it.
// Unknown sections or keys, wrong types and invalid values are kiln::Error naming the file.
RunConfig read_run_config(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});
RunConfig parse_run_config(const std::string& toml_text, const std::string& source,
                           const std::vector<std::string>& overrides = {});
// Every key with its value, as TOML that read_run_config reads back to the same config.
std::string to_toml(const RunConfig& config);
void validate(const RunConfig& config, const std::string& source);

}  // namespace kiln
