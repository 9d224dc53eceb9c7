#include "train/trainer.h"

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <set>
#include <thread>

#include "data/captions.h"
#include "image/png.h"
#include "io/checkpoint.h"
#include "lab/prompt_drift.h"
#include "logging/metrics_log.h"
#include "models/autocast.h"
#include "models/device.h"
#include "pipeline/a1111_parameters.h"
#include "pipeline/loaded_model.h"
#include "pipeline/prompt_file.h"
#include "pipeline/txt2img.h"
#include "train/diffusion_loss.h"
#include "train/distributed.h"
#include "train/burn_watch.h"
#include "train/ema.h"
#include "train/grad_scaler.h"
#include "train/latent_cache.h"
#include "train/lora_adapter.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"
#include "train/optimizer_factory.h"
#include "train/run_seeds.h"
#include "train/training_data.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/whole_number.h"
#include "util/memory.h"
#include "util/progress.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

constexpr const char* kTextEncoder = "text_encoder";
constexpr const char* kUNet = "unet";

// One trained network: its module, settings and (when it trains) its optimizer.
struct Part {
  std::string name;
  const PartSection* settings = nullptr;
  torch::nn::Module* module = nullptr;
  Optimizer* optimizer = nullptr;  // owned by the trainer's PartOptimizers (may be shared)
  std::unique_ptr<ExponentialMovingAverage> ema;
  std::vector<torch::Tensor> trainable;
};

// Which text-encoder parameters stay fixed even when the text encoder trains.
bool frozen_in_text_encoder(const std::string& name, const TextEncoderSection& s) {
  if (s.freeze_embeddings && name.starts_with("text_model.embeddings.")) return true;
  if (s.freeze_final_layer_norm && name.starts_with("text_model.final_layer_norm.")) return true;
  for (int64_t layer = 0; layer < s.freeze_layers; ++layer)
    if (name.starts_with(fmt::format("text_model.encoder.layers.{}.", layer))) return true;
  return false;
}

// A resume state's counter; a malformed one names the file and the key instead of ending in "stoll".
int64_t metadata_number(const fs::path& file, const std::pair<const std::string, std::string>& entry) {
  if (const auto value = parse_whole_number(entry.second)) return *value;
  throw_file_error(file, fmt::format("metadata {} is '{}', not a whole number (a damaged or foreign resume state)",
                                     entry.first, entry.second));
}

// Deletes all but the newest `keep` resume states in `dir` (by global step; 0 keeps all). The newest
// is written completely before anything older goes, so a resumable state always exists.
void prune_states(const fs::path& dir, int64_t keep) {
  if (keep <= 0) return;
  std::vector<std::pair<int64_t, fs::path>> states;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.path().filename().string().ends_with(".state.safetensors")) continue;
    const auto file = SafeTensorsFile::open(entry.path());
    const auto step = file.metadata().find("kiln.global_step");
    states.emplace_back(step == file.metadata().end() ? -1 : metadata_number(entry.path(), *step), entry.path());
  }
  std::sort(states.begin(), states.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < states.size(); ++i) fs::remove(states[i].second);
}

// The tensors of a resume state whose names start with `prefix`, with the prefix taken off.
StateDict entries_under(const SafeTensorsFile& state, const std::string& prefix) {
  StateDict out;
  for (const auto& entry : state.entries())
    if (entry.name.starts_with(prefix)) out[entry.name.substr(prefix.size())] = state.tensor(entry.name);
  return out;
}

std::string epoch_name(int64_t epoch, int64_t batch) {
  return batch == 0 ? fmt::format("e{:04}", epoch) : fmt::format("e{:04}-b{:05}", epoch, batch);
}

std::string process(const TrainingItem& item, const DataSection& d, bool augment, uint64_t seed) {
  CaptionOptions options;
  options.activation_phrase = d.activation_phrase;
  options.tags_to_start = d.tags_to_start;
  options.tags_to_end = d.tags_to_end;
  options.keep_tags = static_cast<int>(d.keep_tags);
  options.shuffle_tags = augment && d.shuffle_tags;
  options.dropout = augment ? d.caption_dropout : 0.0;
  return process_caption(item.caption, options, seed);
}

class Trainer {
 public:
  Trainer(const RunConfig& config, const TrainOptions& options) : config_(config), options_(options) {}
  TrainResult run();

 private:
  void say(const std::string& line) {
    if (options_.console) *options_.console << line << "\n" << std::flush;
  }
  void setup_parts();
  torch::Tensor encode_captions(const std::vector<std::string>& captions, bool with_grad);
  double fixed_noise_loss(const std::vector<TrainingItem>& items, uint64_t stream);
  void evaluate(int64_t epoch);
  void save(int64_t epoch, int64_t batch);
  void save_once(int64_t epoch, int64_t batch);
  void save_lora_checkpoint(const fs::path& path, const std::string& name, int64_t epoch, int64_t batch,
                            const std::string& settings);
  void finish_save(const fs::path& path, const std::string& name, StateDict state, int64_t epoch,
                   int64_t batch, const std::string& trained_parts, const std::string& settings);
  // Draws the sample prompts into samples/NAME/ and returns them for the burn watch.
  SampleRound write_samples(const std::string& name);
  void start_burn_watch();
  void watch_for_burn(const std::string& name, SampleRound round);
  std::vector<GenerationSettings> sample_prompts() const;
  void restore(const fs::path& state_file);
  void set_train_mode(bool training);
  void place_models();
  void cache_all_latents();
  Checkpoint current_checkpoint() const;
  bool has_ema() const {
    return std::any_of(parts_.begin(), parts_.end(), [](const Part& p) { return p.ema != nullptr; });
  }
  // Runs `write` with the moving averages in place of the trained weights (full weights or LoRA
  // matrices), and puts the trained ones back even when it throws.
  void with_averaged_weights(const std::function<void()>& write);
  // The averages' tensors for the resume state, "ema.<part>.<parameter>".
  void add_ema_state(StateDict& state) const;
  // Ctrl-C on any rank stops every rank after the same step.
  bool stop_requested() const {
    const bool here = options_.stop_requested && options_.stop_requested();
    return options_.group ? options_.group->any(here) : here;
  }
  bool is_main() const { return !options_.group || options_.group->is_main(); }
  int world_size() const { return options_.group ? options_.group->world_size() : 1; }
  int rank() const { return options_.group ? options_.group->rank() : 0; }
  AutocastGuard autocast() const { return AutocastGuard(options_.device.type(), precision_); }

  RunConfig config_;
  TrainOptions options_;
  std::optional<LoadedModel> model_;
  NoiseSchedule schedule_;
  TrainingData data_;
  std::unique_ptr<LatentCache> cache_;
  std::vector<Part> parts_;
  std::unique_ptr<LoraAdapter> lora_;  // set when the run trains a LoRA instead of the weights
  PartOptimizers optimizers_;
  std::vector<LrSchedule> schedules_;    // one per optimizers_ entry
  std::set<std::string> trained_parts_;  // parts whose weights differ from the base model
  std::vector<TrainingItem> stabilize_items_;
  std::unique_ptr<MetricsLog> log_;
  TrainResult result_;
  int64_t global_step_ = 0;
  int64_t start_epoch_ = 0, start_batch_ = 0;
  MixedPrecision precision_ = MixedPrecision::No;
  std::optional<GradScaler> scaler_;  // fp16 only
  // Parts kept at half precision because they do not train, as loaded: checkpoints write these, so
  // a frozen part stays bit-identical to the base model.
  std::map<std::string, StateDict> frozen_originals_;
  std::optional<BurnWatch> watch_;
  bool burnt_ = false;  // the burn watch saw a sign at the last checkpoint
};

// Moves the networks to the training device; under mixed precision, the parts that do not train
// (the VAE always; the text encoder or UNet when switched off and no LoRA patches them) are stored
// at the half precision, which halves their memory.
void Trainer::place_models() {
  auto& models = model_->models;
  const auto half = compute_dtype(precision_);
  const bool te_frozen = !config_.text_encoder.train && !config_.lora.enabled;
  const bool unet_frozen = !config_.unet.train && !config_.lora.enabled;
  if (precision_ != MixedPrecision::No) {
    const auto loaded = checkpoint_from_models(models);
    frozen_originals_["vae"] = loaded.vae;
    if (te_frozen) frozen_originals_[kTextEncoder] = loaded.text_encoder;
    if (unet_frozen) frozen_originals_[kUNet] = loaded.unet;
  }
  auto place = [&](torch::nn::Module& module, bool frozen) {
    if (precision_ != MixedPrecision::No && frozen)
      module.to(options_.device, half);
    else
      module.to(options_.device);
  };
  place(*models.vae, true);
  place(*models.text_encoder, te_frozen);
  place(*models.unet, unet_frozen);
}

// Every latent the run will need, up front (both flips when flipping): the ranks share the work
// through the cache folder. After that the VAE is only needed to decode samples, so on a GPU it
// leaves the device's memory until then.
void Trainer::cache_all_latents() {
  std::vector<std::pair<const TrainingItem*, bool>> todo;
  std::set<int64_t> seen;
  for (const auto* items : {&data_.train, &data_.validation})
    for (const auto& item : *items)
      if (seen.insert(item.image_index).second) {
        todo.emplace_back(&item, false);
        if (config_.data.random_flip && items == &data_.train) todo.emplace_back(&item, true);
      }
  std::ostream null_stream(nullptr);
  ProgressBar progress(options_.console ? *options_.console : null_stream, "latents",
                       static_cast<int64_t>(todo.size()), "pictures");
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < todo.size(); ++i) {
      if (static_cast<int>(i % static_cast<size_t>(world_size())) == rank())
        cache_->get(*todo[i].first, todo[i].second);
      progress.update(static_cast<int64_t>(i) + 1);
    }
  }
  progress.finish(fmt::format("{} encoded, the rest from {}", cache_->encoded(),
                              (options_.run_dir / "latent-cache").string()));
  if (options_.group) options_.group->barrier();
  if (options_.device.is_cuda()) model_->models.vae->to(torch::kCPU);
}

Checkpoint Trainer::current_checkpoint() const {
  auto checkpoint = checkpoint_from_models(model_->models);
  checkpoint.scheduler = schedule_.config;
  for (const auto& [part, tensors] : frozen_originals_) {
    if (part == "vae") checkpoint.vae = tensors;
    if (part == kTextEncoder) checkpoint.text_encoder = tensors;
    if (part == kUNet) checkpoint.unet = tensors;
  }
  return checkpoint;
}

void Trainer::setup_parts() {
  auto& models = model_->models;
  models.text_encoder->set_gradient_checkpointing(config_.text_encoder.gradient_checkpointing);
  models.unet->set_gradient_checkpointing(config_.unet.gradient_checkpointing);
  if (config_.lora.enabled) {
    const auto& l = config_.lora;
    lora_ = std::make_unique<LoraAdapter>(
        models, LoraOptions{l.rank, l.alpha, l.targets, l.rank_dropout, l.module_dropout},
        config_.text_encoder.train, config_.unet.train, config_.training.seed);
    say(fmt::format("LoRA: {} modules, rank {}, alpha {}", lora_->modules(), l.rank, l.alpha));
  }
  parts_.clear();
  std::vector<TrainedPart> trained;
  for (const auto& name : {kTextEncoder, kUNet}) {
    Part part;
    part.name = name;
    const bool is_te = part.name == kTextEncoder;
    part.settings = is_te ? static_cast<const PartSection*>(&config_.text_encoder) : &config_.unet;
    part.module = is_te ? static_cast<torch::nn::Module*>(models.text_encoder.get()) : models.unet.get();
    std::vector<NamedParameter> parameters;
    for (const auto& item : part.module->named_parameters()) {
      // With a LoRA the base weights stay frozen; the LoRA's own matrices train instead.
      const bool trains = !lora_ && part.settings->train &&
                          !(is_te && frozen_in_text_encoder(item.key(), config_.text_encoder));
      item.value().set_requires_grad(trains);
      if (trains) {
        parameters.push_back({item.key(), item.value()});
        part.trainable.push_back(item.value());
      }
    }
    if (lora_ && part.settings->train) {
      parameters = lora_->parameters(part.name);
      for (const auto& p : parameters) part.trainable.push_back(p.tensor);
    }
    // A switched-off part gets no optimizer and no state: its weights stay bit-identical.
    if (!parameters.empty()) {
      if (config_.training.ema_decay > 0)
        part.ema = std::make_unique<ExponentialMovingAverage>(parameters, config_.training.ema_decay);
      trained.push_back({part.name, part.settings, std::move(parameters)});
      trained_parts_.insert(part.name);
    }
    parts_.push_back(std::move(part));
  }
  optimizers_ = make_optimizers(std::move(trained));
  for (const auto& note : optimizers_.notes) say("note: " + note);
  for (auto& part : parts_) part.optimizer = optimizers_.of_part(part.name);
}

void Trainer::set_train_mode(bool training) {
  model_->models.text_encoder->train(training);
  model_->models.unet->train(training);
}

torch::Tensor Trainer::encode_captions(const std::vector<std::string>& captions, bool with_grad) {
  std::vector<int64_t> ids;
  for (const auto& caption : captions) {
    const auto one = model_->tokenizer.encode_sd(caption);
    ids.insert(ids.end(), one.begin(), one.end());
  }
  auto input = torch::tensor(ids, torch::kInt64)
                   .reshape({static_cast<int64_t>(captions.size()), -1})
                   .to(options_.device);
  if (with_grad) return model_->models.text_encoder->encode(input, config_.text_encoder.clip_skip);
  torch::NoGradGuard no_grad;
  return model_->models.text_encoder->encode(input, config_.text_encoder.clip_skip);
}

// The loss on fixed noise and fixed, evenly spread timesteps per item: comparable across epochs
// and across runs with the same seed, unlike the noisy per-step training loss.
double Trainer::fixed_noise_loss(const std::vector<TrainingItem>& items, uint64_t stream) {
  if (items.empty()) return std::nan("");
  torch::NoGradGuard no_grad;
  if (lora_) lora_->inject();
  set_train_mode(false);
  const int64_t per_item = std::max<int64_t>(1, config_.validation.timesteps_per_item);
  const auto scale = model_->models.vae->scaling_factor();
  const auto prediction = parse_prediction(config_.model.prediction);
  double total = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const auto& item = items[k];
    const auto x0 = (cache_->get(item, false).mean * scale).expand({per_item, -1, -1, -1}).to(options_.device);
    auto generator = make_generator(config_.training.seed, RandomStream::Validation, stream, k);
    const auto noise = torch::randn(x0.sizes(), generator).to(options_.device);
    std::vector<int64_t> t;
    const double span = static_cast<double>(config_.noise.max_timestep - config_.noise.min_timestep);
    for (int64_t j = 0; j < per_item; ++j)
      t.push_back(config_.noise.min_timestep +
                  static_cast<int64_t>((static_cast<double>(j) + 0.5) * span / per_item));
    const auto timesteps = torch::tensor(t, torch::kInt64).to(options_.device);
    torch::Tensor pred;
    {
      const auto guard = autocast();
      const auto context =
          encode_captions({process(item, config_.data, false, 0)}, false).expand({per_item, -1, -1});
      pred = model_->models.unet->forward(add_noise(schedule_, x0, noise, timesteps), timesteps, context);
    }
    pred = pred.to(torch::kFloat32);
    const auto target = training_target(schedule_, prediction, x0, noise, timesteps);
    total += diffusion_loss(schedule_, pred, target, timesteps, {prediction, config_.loss.min_snr_gamma})
                 .item<double>();
  }
  set_train_mode(true);
  return total / static_cast<double>(items.size());
}

void Trainer::evaluate(int64_t epoch) {
  if (!is_main()) return;
  std::map<std::string, double> values;
  if (!data_.validation.empty()) values["loss/val"] = fixed_noise_loss(data_.validation, 1);
  if (!stabilize_items_.empty()) values["loss/stabilize-train"] = fixed_noise_loss(stabilize_items_, 2);
  if (values.empty()) return;
  release_free_memory();
  log_->log(global_step_, values, epoch);
  std::string line = fmt::format("epoch {}:", epoch);
  for (const auto& [tag, value] : values) line += fmt::format(" {} {:.6f}", tag, value);
  say(line);
}

std::vector<GenerationSettings> Trainer::sample_prompts() const {
  GenerationSettings defaults;
  defaults.sampler = config_.samples.sampler;
  defaults.steps = config_.samples.steps;
  defaults.cfg = config_.samples.cfg;
  defaults.width = config_.samples.width;
  defaults.height = config_.samples.height;
  defaults.seed = config_.samples.seed;
  defaults.clip_skip = config_.text_encoder.clip_skip;
  return read_prompt_file(config_.samples.prompts, defaults);
}

SampleRound Trainer::write_samples(const std::string& name) {
  SampleRound round(config_.data.activation_phrase);
  if (config_.samples.prompts.empty()) return round;
  const auto prompts = sample_prompts();
  const auto dir = options_.run_dir / "samples" / name;
  fs::create_directories(dir);
  torch::NoGradGuard no_grad;
  if (lora_) lora_->inject();
  const auto guard = autocast();
  model_->models.vae->to(options_.device);  // offloaded after caching latents (GPU)
  // The base's samples as the base predicts; the run's checkpoints as the run trains them.
  Txt2Img txt2img(model_->models, model_->tokenizer, name == "base" ? NoiseSchedule(model_->scheduler) : schedule_);
  ModelIdentity identity{name, ""};
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto images = txt2img.generate(prompts[i]);
    for (size_t b = 0; b < images.size(); ++b) {
      const auto seed = prompts[i].seed + b;
      write_png(dir / fmt::format("{:02}-{}.png", i, seed), images[b],
                {{"parameters", format_a1111_parameters(txt2img.resolved(prompts[i]), seed, identity)}});
    }
    round.add(prompts[i].prompt, std::move(images));
  }
  if (options_.device.is_cuda() && config_.data.cache_latents) model_->models.vae->to(torch::kCPU);
  set_train_mode(true);
  return round;
}

// The base model's samples (drawn now, or read back from samples/base/ when a resumed run drew them)
// and its text encoder's output for the control prompts: what every checkpoint is compared with.
void Trainer::start_burn_watch() {
  const auto& d = config_.diagnose;
  if (!is_main() || !(d.warn || d.stop_when_burnt)) return;
  if (config_.samples.prompts.empty()) {
    say("[diagnose] no samples.prompts: the burn watch compares the samples of each checkpoint with the base "
        "model's, so it is off");
    return;
  }
  SampleRound round(config_.data.activation_phrase);
  const auto dir = options_.run_dir / "samples" / "base";
  const auto prompts = sample_prompts();
  bool complete = fs::is_directory(dir);
  std::vector<std::vector<Image>> pictures(prompts.size());
  for (size_t i = 0; i < prompts.size() && complete; ++i)
    for (int64_t b = 0; b < prompts[i].batch && complete; ++b) {
      const auto file = dir / fmt::format("{:02}-{}.png", i, prompts[i].seed + b);
      complete = fs::is_regular_file(file);
      if (complete) pictures[i].push_back(read_png(file));
    }
  if (complete) {
    for (size_t i = 0; i < prompts.size(); ++i) round.add(prompts[i].prompt, std::move(pictures[i]));
  } else {
    say("[diagnose] drawing the base model's samples (samples/base/) for the burn watch");
    round = write_samples("base");
  }
  torch::NoGradGuard no_grad;
  Txt2Img txt2img(model_->models, model_->tokenizer);
  auto conditioning = encode_prompts(txt2img, round.control_prompts(), config_.text_encoder.clip_skip);
  BurnWatchSettings settings;
  settings.activation_phrase = config_.data.activation_phrase;
  for (const auto& folder : config_.data.folders) settings.training_images.emplace_back(folder.path);
  settings.width = static_cast<int>(config_.samples.width);
  settings.height = static_cast<int>(config_.samples.height);
  settings.te_trains = trained_parts_.count(kTextEncoder) > 0;
  settings.unet_trains = trained_parts_.count(kUNet) > 0;
  settings.thresholds = config_.diagnose.thresholds;
  watch_.emplace(std::move(settings), round.take(), std::move(conditioning));
}

void Trainer::watch_for_burn(const std::string& name, SampleRound round) {
  if (!watch_) return;
  torch::NoGradGuard no_grad;
  if (lora_) lora_->inject();
  Txt2Img txt2img(model_->models, model_->tokenizer);
  const auto conditioning = encode_prompts(txt2img, round.control_prompts(), config_.text_encoder.clip_skip);
  set_train_mode(true);
  const auto check = watch_->check(name, round.take(), conditioning);
  if (log_) log_->log(global_step_, check.values, std::nullopt);
  burnt_ = check.burning();
  if (check.burning() && config_.diagnose.warn)
    say(fmt::format("[diagnose] warning: {} (`kiln diagnose {}` for the full diagnosis with the swap test)",
                    check.line, options_.run_dir.string()));
}

void Trainer::save(int64_t epoch, int64_t batch) {
  for (int64_t attempt = 1;; ++attempt) {
    try {
      save_once(epoch, batch);
      release_free_memory();
      return;
    } catch (const Error& e) {
      const auto& c = config_.checkpoints;
      if (attempt > c.save_retries)
        throw Error(fmt::format("{} (saving failed after {} attempt(s); the previous checkpoint is intact)",
                                e.what(), attempt));
      say(fmt::format("saving failed: {}; trying again in {} s ({} of {})", e.what(), c.save_retry_seconds,
                      attempt, c.save_retries));
      std::this_thread::sleep_for(std::chrono::duration<double>(c.save_retry_seconds));
    }
  }
}

void Trainer::save_once(int64_t epoch, int64_t batch) {
  // The other ranks wait at the next collective (or the closing barrier) while the main one writes.
  if (!is_main()) return;
  const auto dir = options_.run_dir / "checkpoints";
  fs::create_directories(dir);
  const auto name = epoch_name(epoch, batch);
  const auto layout = parse_layout(config_.checkpoints.layout);
  const auto path = dir / (layout == CheckpointLayout::Ldm || lora_ ? name + ".safetensors" : name);
  const std::string settings = to_toml(config_);
  if (lora_) {
    save_lora_checkpoint(path, name, epoch, batch, settings);
    return;
  }
  auto checkpoint = current_checkpoint();
  checkpoint.metadata["kiln.run_config"] = settings;
  checkpoint.metadata["kiln.epoch"] = std::to_string(epoch);
  checkpoint.metadata["kiln.global_step"] = std::to_string(global_step_);
  checkpoint.metadata["kiln.version"] = KILN_VERSION;
  checkpoint.metadata["kiln.trained_parts"] = fmt::format("{}", fmt::join(trained_parts_, ","));
  write_checkpoint(checkpoint, path, layout, parse_dtype(config_.checkpoints.dtype));
  if (has_ema()) {
    Checkpoint averaged;
    with_averaged_weights([&] { averaged = current_checkpoint(); });
    averaged.metadata = checkpoint.metadata;
    averaged.metadata["kiln.ema_decay"] = fmt::format("{}", config_.training.ema_decay);
    const auto ema_name = name + "-ema";
    write_checkpoint(averaged, dir / (layout == CheckpointLayout::Ldm ? ema_name + ".safetensors" : ema_name),
                     layout, parse_dtype(config_.checkpoints.dtype));
  }

  // What exact resume needs: fp32 weights of every part that has trained (the checkpoint may be
  // fp16) and each optimizer's state. Noise and data order follow from (seed, epoch, batch).
  StateDict state;
  for (const auto& part : parts_) {
    if (!trained_parts_.count(part.name)) continue;
    for (const auto& item : part.module->named_parameters())
      state["weights." + part.name + "." + item.key()] = item.value().detach();
  }
  add_ema_state(state);
  finish_save(path, name, std::move(state), epoch, batch, fmt::format("{}", fmt::join(trained_parts_, ",")),
              settings);
}

// Both kinds of checkpoint end alike: the resume state beside them (with every optimizer's state and
// where the run stands), then the samples.
void Trainer::finish_save(const fs::path& path, const std::string& name, StateDict state, int64_t epoch,
                          int64_t batch, const std::string& trained_parts, const std::string& settings) {
  for (const auto& entry : optimizers_.entries)
    for (const auto& [key, tensor] : entry.optimizer->state())
      state["optimizer." + entry.state_prefix + "." + key] = tensor;
  if (scaler_)
    for (const auto& [key, tensor] : scaler_->state()) state["grad_scaler." + key] = tensor;
  SafeTensorsWriteOptions write;
  write.metadata = {{"kiln.epoch", std::to_string(epoch)},
                    {"kiln.batch", std::to_string(batch)},
                    {"kiln.global_step", std::to_string(global_step_)},
                    {"kiln.trained_parts", trained_parts},
                    {"kiln.run_config", settings}};
  save_safetensors(path.parent_path() / (name + ".state.safetensors"), state, write);
  prune_states(path.parent_path(), config_.checkpoints.keep_last_states);
  result_.checkpoints.push_back(path);
  say("saved " + path.string());
  watch_for_burn(name, write_samples(name));
}

// A LoRA run's checkpoint is the LoRA file itself (kohya format, loadable by A1111, ComfyUI,
// stable-diffusion.cpp); its resume state holds the fp32 LoRA matrices and the optimizer state.
void Trainer::save_lora_checkpoint(const fs::path& path, const std::string& name, int64_t epoch,
                                   int64_t batch, const std::string& settings) {
  Metadata metadata{{"kiln.run_config", settings},
                    {"kiln.epoch", std::to_string(epoch)},
                    {"kiln.global_step", std::to_string(global_step_)},
                    {"kiln.version", KILN_VERSION},
                    {"ss_base_model", config_.model.checkpoint},
                    {"ss_epoch", std::to_string(epoch)},
                    {"ss_steps", std::to_string(global_step_)},
                    {"ss_seed", std::to_string(config_.training.seed)},
                    {"ss_clip_skip", std::to_string(config_.text_encoder.clip_skip)},
                    {"ss_learning_rate", fmt::format("{}", config_.unet.lr)},
                    {"ss_text_encoder_lr", fmt::format("{}", config_.text_encoder.lr)},
                    {"ss_unet_lr", fmt::format("{}", config_.unet.lr)}};
  lora_->save(path, parse_dtype(config_.checkpoints.dtype), metadata);
  if (has_ema()) {
    metadata["kiln.ema_decay"] = fmt::format("{}", config_.training.ema_decay);
    with_averaged_weights([&] {
      lora_->save(path.parent_path() / (name + "-ema.safetensors"), parse_dtype(config_.checkpoints.dtype), metadata);
    });
  }
  StateDict state;
  for (const auto& part : parts_)
    for (const auto& p : lora_->parameters(part.name)) state["lora." + p.name] = p.tensor.detach();
  add_ema_state(state);
  finish_save(path, name, std::move(state), epoch, batch, "", settings);
}

void Trainer::with_averaged_weights(const std::function<void()>& write) {
  for (auto& part : parts_)
    if (part.ema) part.ema->swap_in();
  try {
    write();
  } catch (...) {
    for (auto& part : parts_)
      if (part.ema) part.ema->swap_out();
    throw;
  }
  for (auto& part : parts_)
    if (part.ema) part.ema->swap_out();
}

void Trainer::add_ema_state(StateDict& state) const {
  for (const auto& part : parts_)
    if (part.ema)
      for (const auto& [key, tensor] : part.ema->state()) state["ema." + part.name + "." + key] = tensor;
}

void Trainer::restore(const fs::path& state_file) {
  const auto state = SafeTensorsFile::open(state_file);
  const auto& meta = state.metadata();
  auto get = [&](const std::string& key) {
    const auto it = meta.find(key);
    if (it == meta.end()) throw_file_error(state_file, "is not a kiln resume state (no " + key + ")");
    return it->second;
  };
  const auto number = [&](const std::string& key) { return metadata_number(state_file, {key, get(key)}); };
  start_epoch_ = number("kiln.epoch");
  start_batch_ = number("kiln.batch");
  global_step_ = number("kiln.global_step");
  torch::NoGradGuard no_grad;
  std::string parts = get("kiln.trained_parts");
  for (const auto& part : parts_) {
    if (parts.find(part.name) == std::string::npos) continue;
    trained_parts_.insert(part.name);
    for (const auto& item : part.module->named_parameters()) {
      const auto key = "weights." + part.name + "." + item.key();
      if (!state.contains(key)) throw_file_error(state_file, "misses " + key);
      item.value().copy_(state.tensor(key));
    }
  }
  if (lora_) {
    for (const auto& part : parts_)
      for (const auto& p : lora_->parameters(part.name)) {
        const auto key = "lora." + p.name;
        if (!state.contains(key)) throw_file_error(state_file, "misses " + key);
        p.tensor.detach().copy_(state.tensor(key));
      }
  }
  for (auto& optimizer : optimizers_.entries) {
    const auto optimizer_state = entries_under(state, "optimizer." + optimizer.state_prefix + ".");
    // A part that starts training at this resume (or changes optimizer) starts with fresh state.
    if (!optimizer_state.empty()) optimizer.optimizer->load_state(optimizer_state);
  }
  if (scaler_) {
    const auto scaler_state = entries_under(state, "grad_scaler.");
    if (!scaler_state.empty()) scaler_->load_state(scaler_state);
  }
  for (auto& part : parts_) {
    // An average that was saved continues; one switched on at this resume starts from the weights.
    const auto ema_state = entries_under(state, "ema." + part.name + ".");
    if (part.ema && !ema_state.empty()) part.ema->load_state(ema_state);
    if (part.ema && ema_state.empty()) part.ema->reset_to_weights();
  }
}

TrainResult Trainer::run() {
  fs::create_directories(options_.run_dir);
  // Half-written files of a process that was killed mid-save (never under a final name).
  if (is_main())
    for (const auto& dir : {options_.run_dir, options_.run_dir / "checkpoints", options_.run_dir / "latent-cache"})
      if (const int removed = remove_stale_temporaries(dir); removed > 0)
        say(fmt::format("removed {} temporary file(s) a killed run left in {}", removed, dir.string()));
  // --init-from replaces the base model for this run: recorded in run.toml, so --resume and the
  // checkpoints' metadata name the model the run really started from.
  if (options_.init_from) config_.model.checkpoint = fs::absolute(*options_.init_from).string();
  // Written before any work, so a run killed in its first seconds (caching latents, drawing the
  // base's samples) can be resumed: with no state yet, --resume starts it over.
  if (is_main()) write_text_atomically(options_.run_dir / "run.toml", to_toml(config_));
  const fs::path base = config_.model.checkpoint;
  // A broken prompts file should fail now, not at the first checkpoint hours later.
  if (!config_.samples.prompts.empty()) sample_prompts();
  std::optional<fs::path> model_config;
  if (!config_.model.config.empty()) model_config = config_.model.config;
  precision_ = parse_mixed_precision(config_.training.mixed_precision);
  check_mixed_precision_supported(options_.device.type(), precision_);
  if (precision_ == MixedPrecision::FP16) scaler_.emplace();
  say("loading " + base.string());
  model_.emplace(load_model(base, model_config, false));
  // The base's β and spacing; the prediction the run file asks for (v_prediction trains the v target).
  NoiseScheduleConfig schedule = model_->scheduler;
  schedule.prediction = parse_prediction(config_.model.prediction);
  schedule_ = NoiseSchedule(schedule);
  place_models();
  if (options_.device != torch::kCPU || precision_ != MixedPrecision::No || world_size() > 1)
    say(fmt::format("device {}, mixed precision {}, {} process(es)", device_name(options_.device),
                    mixed_precision_name(precision_), world_size()));
  std::ostringstream warnings;
  data_ = prepare_training_data(config_, warnings);
  if (!warnings.str().empty()) say(warnings.str());
  say(fmt::format("{} training images ({} with repeats), {} validation images", data_.unique_train_images,
                  data_.train.size(), data_.validation.size()));
  cache_ = std::make_unique<LatentCache>(
      config_.data.cache_latents ? options_.run_dir / "latent-cache" : fs::path(), model_->models.vae,
      config_.data.crop == "random", config_.training.seed);
  if (config_.data.cache_latents) cache_all_latents();
  setup_parts();
  start_burn_watch();
  if (options_.resume) {
    // A run killed before its first checkpoint has nothing to resume: it starts over.
    std::optional<fs::path> state;
    try {
      state = latest_state(options_.run_dir);
    } catch (const Error&) {
      say("no resume state in " + options_.run_dir.string() + " yet: starting from the beginning");
    }
    if (state) restore(*state);
  }
  std::vector<torch::Tensor> trainable;
  for (const auto& part : parts_) trainable.insert(trainable.end(), part.trainable.begin(), part.trainable.end());
  if (options_.group) {
    torch::NoGradGuard no_grad;
    options_.group->broadcast_from_main(trainable);  // every rank starts from the very same weights
  }
  if (is_main()) log_ = std::make_unique<MetricsLog>(options_.run_dir, config_.logging.tensorboard);

  // The stabilised training loss watches a fixed, seeded choice of training pictures.
  {
    std::vector<TrainingItem> unique;
    std::set<int64_t> seen;
    for (const auto& item : data_.train)
      if (seen.insert(item.image_index).second) unique.push_back(item);
    const auto order =
        torch::randperm(static_cast<int64_t>(unique.size()),
                        make_generator(config_.training.seed, RandomStream::Selection, 2), torch::kLong);
    for (int64_t i = 0; i < std::min<int64_t>(config_.validation.stabilize_items, order.size(0)); ++i)
      stabilize_items_.push_back(unique[static_cast<size_t>(order[i].item<int64_t>())]);
  }

  const auto& d = config_.data;
  // Batches are drawn at the global size, so N processes with batch b see what one process with
  // batch N·b would: the same items, captions and noise.
  const int64_t global_batch_size = d.batch_size * world_size();
  const int64_t batches_per_epoch = static_cast<int64_t>(
      epoch_batches(data_.train, global_batch_size, config_.training.seed, 0).size());
  const int64_t steps_per_epoch = (batches_per_epoch + d.gradient_accumulation - 1) / d.gradient_accumulation;
  const int64_t total_steps = steps_per_epoch * config_.training.epochs;
  for (const auto& entry : optimizers_.entries) {
    const auto& s = *entry.schedule_from;
    schedules_.push_back({s.schedule, entry.base_lr, s.warmup_steps, total_steps, s.schedule_cycles,
                          s.schedule_power, s.schedule_end_lr});
  }
  say("settings:\n" + to_toml(config_));

  set_train_mode(true);
  if (start_epoch_ == 0 && start_batch_ == 0 && global_step_ == 0) evaluate(0);
  std::ostream null_stream(nullptr);
  ProgressBar progress(options_.console ? *options_.console : null_stream, "train",
                       std::max<int64_t>(0, total_steps - global_step_));
  const int64_t session_start_step = global_step_;
  const auto prediction = parse_prediction(config_.model.prediction);
  const LossOptions loss_options{prediction, config_.loss.min_snr_gamma};
  const auto scale = model_->models.vae->scaling_factor();

  for (int64_t epoch = start_epoch_; epoch < config_.training.epochs; ++epoch) {
    const auto batches = epoch_batches(data_.train, global_batch_size, config_.training.seed, epoch);
    double epoch_loss = 0;
    int64_t epoch_steps_done = 0;
    double step_loss = 0;  // this rank's share of the mean loss of the accumulated batches
    int64_t accumulated = 0, images = 0;
    auto step_started = std::chrono::steady_clock::now();
    // After an optimizer step, or instead of one (a skipped step's gradients are dropped too).
    const auto next_step = [&](bool drop_gradients) {
      if (drop_gradients)
        for (auto& entry : optimizers_.entries) entry.optimizer->zero_grad();
      step_loss = 0;
      accumulated = 0;
      images = 0;
      step_started = std::chrono::steady_clock::now();
    };
    const int64_t first_batch = epoch == start_epoch_ ? start_batch_ : 0;
    for (int64_t b = first_batch; b < static_cast<int64_t>(batches.size()); ++b) {
      const auto& global_batch = batches[static_cast<size_t>(b)];
      const auto global_n = static_cast<int64_t>(global_batch.size());
      // This rank's contiguous slice of the global batch (empty for a short last batch).
      const int64_t begin = std::min<int64_t>(global_n, rank() * d.batch_size);
      const int64_t end = std::min<int64_t>(global_n, begin + d.batch_size);
      std::vector<std::string> captions;
      std::vector<torch::Tensor> means, stds;
      for (int64_t i = begin; i < end; ++i) {
        const auto index = global_batch[static_cast<size_t>(i)];
        const auto& item = data_.train[index];
        const bool flip =
            d.random_flip &&
            (derive_seed(config_.training.seed, RandomStream::Flip, static_cast<uint64_t>(epoch), index) & 1);
        const auto latent = cache_->get(item, flip);
        means.push_back(latent.mean);
        stds.push_back(latent.std);
        captions.push_back(process(
            item, d, true,
            derive_seed(config_.training.seed, RandomStream::Caption, static_cast<uint64_t>(epoch), index)));
      }
      if (!means.empty()) {
        const auto mean = torch::cat(means), std = torch::cat(stds);
        // Every draw of the global batch from one generator at (epoch, batch), in a fixed order; each
        // rank keeps its rows.
        std::vector<int64_t> shape = mean.sizes().vec();
        shape[0] = global_n;
        auto generator = make_generator(config_.training.seed, RandomStream::Noise,
                                        static_cast<uint64_t>(epoch), static_cast<uint64_t>(b));
        const auto rows = [&](const torch::Tensor& all) { return all.slice(0, begin, end).to(options_.device); };
        const auto latent_noise = rows(torch::randn(shape, generator));
        auto noise = rows(torch::randn(shape, generator));
        const auto timesteps =
            rows(torch::randint(config_.noise.min_timestep, config_.noise.max_timestep, {global_n}, generator,
                                torch::kLong));
        const auto offset = rows(torch::randn({global_n, shape[1], 1, 1}, generator));
        if (config_.noise.offset > 0) noise = noise + config_.noise.offset * offset;
        const auto x0 = (mean.to(options_.device) + std.to(options_.device) * latent_noise) * scale;

        if (lora_) lora_->inject(global_step_);  // this step's W₀ + (α/r)·U·D, with a graph to U and D
        torch::Tensor pred;
        {
          const auto guard = autocast();
          const auto context =
              encode_captions(captions, config_.text_encoder.train && parts_[0].optimizer != nullptr);
          pred = model_->models.unet->forward(add_noise(schedule_, x0, noise, timesteps), timesteps, context);
        }
        const auto target = training_target(schedule_, prediction, x0, noise, timesteps);
        const auto loss = diffusion_loss(schedule_, pred.to(torch::kFloat32), target, timesteps, loss_options);
        // Weighted by this rank's share of the batch: summed over ranks, the gradients are the
        // gradient of the whole batch's mean loss.
        const double share = static_cast<double>(end - begin) / static_cast<double>(global_n);
        auto objective = loss * (share / static_cast<double>(d.gradient_accumulation));
        if (scaler_) objective = scaler_->scale(objective);
        objective.backward();
        step_loss += loss.item<double>() * share;
      }
      ++accumulated;
      images += global_n;
      const bool last = b + 1 == static_cast<int64_t>(batches.size());
      if (accumulated < d.gradient_accumulation && !last) continue;

      if (options_.group) {
        // A parameter no rank produced a gradient for (unused at this CLIP skip, say) stays without
        // one, as in a single process, so the optimizer skips it there too.
        std::vector<float> flags(trainable.size());
        for (size_t i = 0; i < trainable.size(); ++i) flags[i] = trainable[i].grad().defined() ? 1.0f : 0.0f;
        const auto has_grad = torch::tensor(flags);
        options_.group->all_reduce_sum(has_grad);
        const float* anywhere = has_grad.data_ptr<float>();
        options_.group->all_reduce_gradients(trainable);
        for (size_t i = 0; i < trainable.size(); ++i)
          if (anywhere[i] == 0.0f) trainable[i].mutable_grad().reset();
        auto reduced = torch::tensor({step_loss}, torch::kFloat64);
        options_.group->all_reduce_sum(reduced);
        step_loss = reduced.item<double>();
      }
      // fp16: gradients that overflowed at this loss scale skip the step and lower the scale.
      if (scaler_) {
        const bool finite = scaler_->unscale(trainable);
        scaler_->update(finite);
        if (!finite) {
          say(fmt::format("fp16 overflow at step {}: step skipped, loss scale now {}", global_step_ + 1,
                          scaler_->current_scale()));
          next_step(true);
          continue;
        }
      }
      std::map<std::string, double> values{{"loss/step", step_loss / static_cast<double>(accumulated)}};
      for (auto& part : parts_) {
        if (!part.optimizer) continue;
        const double max_norm = part.settings->max_grad_norm > 0 ? part.settings->max_grad_norm
                                                                 : std::numeric_limits<double>::infinity();
        values["grad_norm/" + part.name] = torch::nn::utils::clip_grad_norm_(part.trainable, max_norm);
      }
      // One bad step poisons every weight it touches: caught before the optimizer applies it.
      if (const auto bad = std::find_if(values.begin(), values.end(),
                                        [](const auto& v) { return !std::isfinite(v.second); });
          bad != values.end()) {
        const auto what = fmt::format("{} is {} at step {} (epoch {}, batch {})", bad->first, bad->second,
                                      global_step_ + 1, epoch + 1, b + 1);
        if (config_.training.on_nan != "skip")
          throw Error(fmt::format("{}: training stopped: {}; nothing was saved and the last checkpoint is as it "
                                  "was (lower the learning rate, or set training.on_nan = \"skip\")",
                                  options_.run_dir.string(), what));
        say("skipped: " + what);
        next_step(true);
        continue;
      }
      for (size_t o = 0; o < optimizers_.entries.size(); ++o) {
        auto& entry = optimizers_.entries[o];
        const double lr = learning_rate_at(schedules_[o], global_step_);
        entry.optimizer->set_learning_rate(lr);
        entry.optimizer->step();
        entry.optimizer->zero_grad();
        const auto diagnostics = entry.optimizer->diagnostics();
        for (const auto& part : entry.parts) {
          values["lr/" + part] = lr;
          if (auto d = diagnostics.find("d"); d != diagnostics.end()) values["d/" + part] = d->second;
        }
      }
      for (auto& part : parts_)
        if (part.ema) part.ema->update();
      ++global_step_;
      if (options_.after_step) options_.after_step(global_step_, trainable);
      epoch_loss += step_loss;
      epoch_steps_done += accumulated;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - step_started).count();
      values["performance/images_per_second"] = static_cast<double>(images) / std::max(seconds, 1e-9);
      if (log_ && global_step_ % std::max<int64_t>(1, config_.logging.every_steps) == 0)
        log_->log(global_step_, values, epoch + 1);
      std::string rates;
      for (const auto& part : parts_)
        if (part.optimizer)
          rates +=
              fmt::format("  lr {} {:.3g}", part.name == kUNet ? "unet" : "te", values["lr/" + part.name]);
      progress.update(
          global_step_ - session_start_step,
          fmt::format("epoch {}/{}  loss {:.4f}{}  {:.2f} img/s", epoch + 1, config_.training.epochs,
                      values["loss/step"], rates, values["performance/images_per_second"]));
      next_step(false);
      if (stop_requested() && !last) {
        progress.finish("interrupted");
        save(epoch, b + 1);
        result_.interrupted = true;
        result_.epochs_done = epoch;
        result_.global_step = global_step_;
        return result_;
      }
    }
    const int64_t done = epoch + 1;
    if (log_) log_->log(global_step_, {{"loss/epoch", epoch_loss / std::max<int64_t>(1, epoch_steps_done)}}, done);
    const auto& c = config_.checkpoints;
    const bool listed = std::find(c.epochs.begin(), c.epochs.end(), done) != c.epochs.end();
    const bool periodic = c.every_epochs > 0 && done >= c.from_epoch && done % c.every_epochs == 0;
    const bool validate_now =
        config_.validation.every_epochs > 0 && done % config_.validation.every_epochs == 0;
    if (validate_now || done == config_.training.epochs) evaluate(done);
    const bool stop = stop_requested();
    if (listed || periodic || done == config_.training.epochs || stop) save(done, 0);
    // Every rank asks, so every rank stops after the same epoch.
    const bool burnt = config_.diagnose.stop_when_burnt && (options_.group ? options_.group->any(burnt_) : burnt_);
    if (burnt && done < config_.training.epochs) {
      say(fmt::format("[diagnose] stopping after epoch {}: a burn sign crossed (diagnose.stop_when_burnt)", done));
      result_.stopped_burnt = true;
      result_.epochs_done = done;
      result_.global_step = global_step_;
      progress.finish("stopped: burning");
      return result_;
    }
    if (stop) {
      result_.interrupted = done < config_.training.epochs;
      result_.epochs_done = done;
      result_.global_step = global_step_;
      progress.finish("interrupted");
      return result_;
    }
  }
  progress.finish();
  if (options_.group) options_.group->barrier();  // the main rank's last save is complete
  result_.epochs_done = config_.training.epochs;
  result_.global_step = global_step_;
  return result_;
}

}  // namespace

fs::path latest_state(const fs::path& run_dir) {
  const auto dir = run_dir / "checkpoints";
  if (!fs::is_directory(dir)) throw_file_error(run_dir, "holds no checkpoints to resume from");
  fs::path best;
  int64_t best_step = -1;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    if (!name.ends_with(".state.safetensors")) continue;
    const auto file = SafeTensorsFile::open(entry.path());
    const auto it = file.metadata().find("kiln.global_step");
    if (it == file.metadata().end()) continue;
    const auto step = metadata_number(entry.path(), *it);
    if (step > best_step) {
      best_step = step;
      best = entry.path();
    }
  }
  if (best.empty()) throw_file_error(run_dir, "holds no resume state (checkpoints/*.state.safetensors)");
  return best;
}

TrainResult train(const RunConfig& config, const TrainOptions& options) {
  return Trainer(config, options).run();
}

}  // namespace kiln
