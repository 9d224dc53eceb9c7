#include "train/run_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <toml++/toml.h>
#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "diffusion/sampler.h"
#include "train/lr_schedule.h"
#include "train/optimizer_factory.h"
#include "util/error.h"
#include "util/spelling.h"

namespace kiln {

namespace {

// One list of fields per section, used both to read and to write, so the two cannot drift apart.
template <typename V>
void fields(V& v, ModelSection& s) {
  v("checkpoint", s.checkpoint);
  v("config", s.config);
  v("prediction", s.prediction);
}
template <typename V>
void fields(V& v, DataSection& s) {
  v("folders", s.folders);
  v("resolution", s.resolution);
  v("buckets", s.buckets);
  v("min_bucket", s.min_bucket);
  v("max_bucket", s.max_bucket);
  v("bucket_step", s.bucket_step);
  v("crop", s.crop);
  v("random_flip", s.random_flip);
  v("caption_extensions", s.caption_extensions);
  v("activation_phrase", s.activation_phrase);
  v("shuffle_tags", s.shuffle_tags);
  v("keep_tags", s.keep_tags);
  v("tags_to_start", s.tags_to_start);
  v("tags_to_end", s.tags_to_end);
  v("caption_dropout", s.caption_dropout);
  v("cache_latents", s.cache_latents);
  v("skip_bad_files", s.skip_bad_files);
  v("batch_size", s.batch_size);
  v("gradient_accumulation", s.gradient_accumulation);
}
template <typename V>
void fields(V& v, PartSection& s) {
  v("train", s.train);
  v("lr", s.lr);
  v("optimizer", s.optimizer);
  v("weight_decay", s.weight_decay);
  v("beta1", s.beta1);
  v("beta2", s.beta2);
  v("eps", s.eps);
  v("block_size", s.block_size);
  v("schedule", s.schedule);
  v("warmup_steps", s.warmup_steps);
  v("schedule_cycles", s.schedule_cycles);
  v("schedule_power", s.schedule_power);
  v("schedule_end_lr", s.schedule_end_lr);
  v("max_grad_norm", s.max_grad_norm);
  v("gradient_checkpointing", s.gradient_checkpointing);
}
template <typename V>
void fields(V& v, TextEncoderSection& s) {
  fields(v, static_cast<PartSection&>(s));
  v("clip_skip", s.clip_skip);
  v("freeze_embeddings", s.freeze_embeddings);
  v("freeze_layers", s.freeze_layers);
  v("freeze_final_layer_norm", s.freeze_final_layer_norm);
}
template <typename V>
void fields(V& v, NoiseSection& s) {
  v("offset", s.offset);
  v("min_timestep", s.min_timestep);
  v("max_timestep", s.max_timestep);
}
template <typename V>
void fields(V& v, LossSection& s) {
  v("min_snr_gamma", s.min_snr_gamma);
}
template <typename V>
void fields(V& v, TrainingSection& s) {
  v("on_nan", s.on_nan);
  v("mixed_precision", s.mixed_precision);
  v("seed", s.seed);
  v("epochs", s.epochs);
  v("ema_decay", s.ema_decay);
}
template <typename V>
void fields(V& v, ValidationSection& s) {
  v("folder", s.folder);
  v("split", s.split);
  v("every_epochs", s.every_epochs);
  v("stabilize_items", s.stabilize_items);
  v("timesteps_per_item", s.timesteps_per_item);
}
template <typename V>
void fields(V& v, CheckpointSection& s) {
  v("every_epochs", s.every_epochs);
  v("from_epoch", s.from_epoch);
  v("epochs", s.epochs);
  v("dtype", s.dtype);
  v("layout", s.layout);
  v("keep_last_states", s.keep_last_states);
  v("save_retries", s.save_retries);
  v("save_retry_seconds", s.save_retry_seconds);
}
template <typename V>
void fields(V& v, SamplesSection& s) {
  v("prompts", s.prompts);
  v("sampler", s.sampler);
  v("steps", s.steps);
  v("cfg", s.cfg);
  v("width", s.width);
  v("height", s.height);
  v("seed", s.seed);
}
template <typename V>
void fields(V& v, LoraSection& s) {
  v("enabled", s.enabled);
  v("rank", s.rank);
  v("alpha", s.alpha);
  v("targets", s.targets);
  v("rank_dropout", s.rank_dropout);
  v("module_dropout", s.module_dropout);
}
template <typename V>
void fields(V& v, LoggingSection& s) {
  v("tensorboard", s.tensorboard);
  v("every_steps", s.every_steps);
}

template <typename V>
void fields(V& v, DiagnoseSection& s) {
  v("warn", s.warn);
  v("stop_when_burnt", s.stop_when_burnt);
  v("control_change", s.thresholds.control_change);
  v("style_bleed", s.thresholds.style_bleed);
  v("prompt_drift", s.thresholds.prompt_drift);
  v("adherence_drop", s.thresholds.adherence_drop);
  v("saturation_increase", s.thresholds.saturation_increase);
  v("contrast_increase", s.thresholds.contrast_increase);
  v("high_frequency_increase", s.thresholds.high_frequency_increase);
  v("diversity_drop", s.thresholds.diversity_drop);
}

template <typename V>
void sections(V& v, RunConfig& c) {
  v.section("model", c.model);
  v.section("data", c.data);
  v.section("text_encoder", c.text_encoder);
  v.section("unet", c.unet);
  v.section("noise", c.noise);
  v.section("loss", c.loss);
  v.section("training", c.training);
  v.section("validation", c.validation);
  v.section("checkpoints", c.checkpoints);
  v.section("samples", c.samples);
  v.section("lora", c.lora);
  v.section("logging", c.logging);
  v.section("diagnose", c.diagnose);
}

// What other trainers (kohya sd-scripts, diffusers' scripts, EveryDream2) call kiln's keys.
constexpr std::pair<std::string_view, std::string_view> kOtherTrainersNames[] = {
    {"learning_rate", "lr"},           {"unet_lr", "lr"},
    {"text_encoder_lr", "lr"},         {"lr_scheduler", "schedule"},
    {"lr_warmup_steps", "warmup_steps"}, {"optimizer_type", "optimizer"},
    {"train_batch_size", "batch_size"}, {"max_train_epochs", "epochs"},
    {"num_train_epochs", "epochs"},    {"network_dim", "rank"},
    {"network_alpha", "alpha"},        {"save_every_n_epochs", "every_epochs"},
    {"save_precision", "dtype"},       {"caption_extension", "caption_extensions"},
    {"shuffle_caption", "shuffle_tags"}, {"keep_tokens", "keep_tags"},
    {"flip_aug", "random_flip"},       {"noise_offset", "offset"},
    {"sample_sampler", "sampler"},     {"sample_prompts", "prompts"},
    {"gradient_accumulation_steps", "gradient_accumulation"},
};

// "; did you mean lr?" for a misspelt key or another trainer's name for one, else "".
std::string suggestion(const std::string& key, const std::vector<std::string>& known) {
  for (const auto& [theirs, ours] : kOtherTrainersNames)
    if (key == theirs && std::find(known.begin(), known.end(), ours) != known.end())
      return fmt::format("; did you mean {}?", ours);
  if (const auto close = closest_match(key, known)) return fmt::format("; did you mean {}?", *close);
  return "";
}

class Reader {
 public:
  Reader(const toml::table& doc, std::string source) : doc_(doc), source_(std::move(source)) {}

  template <typename S>
  void section(const std::string& name, S& s) {
    known_sections_.insert(name);
    const auto* node = doc_.get(name);
    if (!node) return;
    table_ = node->as_table();
    if (!table_) fail(name, "must be a table ([" + name + "])");
    section_ = name;
    std::set<std::string> known;
    keys_ = &known;
    fields(*this, s);
    for (const auto& [key, value] : *table_)
      if (!known.count(std::string(key.str())))
        fail(std::string(key.str()), "is not a setting of [" + name + "]" +
                                         suggestion(std::string(key.str()), {known.begin(), known.end()}) +
                                         " (see docs/run-file.md)");
  }

  template <typename T>
  void operator()(const std::string& key, T& out) {
    keys_->insert(key);
    const auto* node = table_->get(key);
    if (node) read(key, *node, out);
  }

  void finish() const {
    for (const auto& [key, value] : doc_)
      if (!known_sections_.count(std::string(key.str())))
        throw Error(fmt::format(
            "{}: unknown section [{}]{} (model, data, text_encoder, unet, noise, loss, training, "
            "validation, checkpoints, samples, lora, logging)",
            source_, key.str(),
            suggestion(std::string(key.str()), {known_sections_.begin(), known_sections_.end()})));
  }

 private:
  [[noreturn]] void fail(const std::string& key, const std::string& problem) const {
    throw Error(fmt::format("{}: {}.{} {}", source_, section_, key, problem));
  }
  void read(const std::string& key, const toml::node& node, std::string& out) {
    auto v = node.value_exact<std::string>();
    if (!v) fail(key, "must be a string");
    out = *v;
  }
  void read(const std::string& key, const toml::node& node, bool& out) {
    auto v = node.value_exact<bool>();
    if (!v) fail(key, "must be true or false");
    out = *v;
  }
  void read(const std::string& key, const toml::node& node, int64_t& out) {
    auto v = node.value_exact<int64_t>();
    if (!v) fail(key, "must be an integer");
    out = *v;
  }
  void read(const std::string& key, const toml::node& node, uint64_t& out) {
    auto v = node.value_exact<int64_t>();
    if (!v || *v < 0) fail(key, "must be a non-negative integer");
    out = static_cast<uint64_t>(*v);
  }
  void read(const std::string& key, const toml::node& node, double& out) {
    auto v = node.value<double>();  // integers are numbers too
    if (!v || node.is_boolean()) fail(key, "must be a number");
    out = *v;
  }
  template <typename T>
  void read(const std::string& key, const toml::node& node, std::vector<T>& out) {
    const auto* array = node.as_array();
    if (!array) fail(key, "must be an array");
    out.clear();
    for (const auto& item : *array) read(key, item, out.emplace_back());
  }
  void read(const std::string& key, const toml::node& node, DataFolder& out) {
    if (node.is_string()) {  // a bare path means repeats = 1
      out.path = *node.value<std::string>();
      return;
    }
    const auto* table = node.as_table();
    if (!table) fail(key, "entries must be a path or { path = \"...\", repeats = N }");
    for (const auto& [name, value] : *table) {
      if (name == "path")
        read(key + ".path", value, out.path);
      else if (name == "repeats")
        read(key + ".repeats", value, out.repeats);
      else
        fail(key, "entries take only path and repeats (not " + std::string(name.str()) + ")");
    }
  }

  const toml::table& doc_;
  std::string source_;
  std::string section_;
  const toml::table* table_ = nullptr;
  std::set<std::string>* keys_ = nullptr;
  std::set<std::string> known_sections_;
};

class Writer {
 public:
  template <typename S>
  void section(const std::string& name, S& s) {
    current_ = toml::table();
    fields(*this, s);
    doc_.insert(name, std::move(current_));
  }
  template <typename T>
  void operator()(const std::string& key, T& value) {
    current_.insert(key, to_node(value));
  }
  const toml::table& doc() const { return doc_; }

 private:
  static toml::table to_node(const DataFolder& f) {
    return toml::table{{"path", f.path}, {"repeats", f.repeats}};
  }
  static std::string to_node(const std::string& s) { return s; }
  static bool to_node(bool b) { return b; }
  static int64_t to_node(int64_t i) { return i; }
  static int64_t to_node(uint64_t i) { return static_cast<int64_t>(i); }
  static double to_node(double d) { return d; }
  template <typename T>
  static toml::array to_node(const std::vector<T>& items) {
    toml::array array;
    for (const auto& item : items) array.push_back(to_node(item));
    return array;
  }
  toml::table doc_, current_;
};

// Paths in a run file are relative to the file, so a run folder can move with its data.
void resolve_relative_paths(toml::table& doc, const std::filesystem::path& base) {
  auto resolve = [&](toml::node* node) {
    if (!node || !node->is_string()) return;
    auto& value = *node->as_string();
    const std::filesystem::path path = value.get();
    if (!path.empty() && path.is_relative()) value = (base / path).lexically_normal().string();
  };
  resolve(doc.at_path("model.checkpoint").node());
  resolve(doc.at_path("model.config").node());
  resolve(doc.at_path("validation.folder").node());
  resolve(doc.at_path("samples.prompts").node());
  if (auto* folders = doc.at_path("data.folders").as_array())
    for (auto& item : *folders) {
      if (item.is_string()) resolve(&item);
      if (auto* table = item.as_table()) resolve(table->get("path"));
    }
}

// Paths given with --set are relative to where kiln runs, as on any command line.
void apply_override(toml::table& doc, const std::string& text, const std::string& source) {
  const auto eq = text.find('=');
  const auto dot = text.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq)
    throw Error(fmt::format("{}: --set '{}' must read section.key=value", source, text));
  const auto section = text.substr(0, dot), key = text.substr(dot + 1, eq - dot - 1);
  const auto value_text = text.substr(eq + 1);
  toml::table parsed;
  try {
    parsed = toml::parse("value = " + value_text);
  } catch (const toml::parse_error&) {
    parsed = toml::table{{"value", value_text}};  // a bare word: a string
  }
  if (!doc.contains(section)) doc.insert(section, toml::table());
  auto* table = doc[section].as_table();
  if (!table) throw Error(fmt::format("{}: [{}] is not a table", source, section));
  table->insert_or_assign(key, *parsed.get("value"));
  toml::table only_this{{section, toml::table{{key, *parsed.get("value")}}}};
  resolve_relative_paths(only_this, std::filesystem::current_path());
  table->insert_or_assign(key, *only_this.at_path(section + "." + key).node());
}

}  // namespace

RunConfig parse_run_config(const std::string& toml_text, const std::string& source,
                           const std::vector<std::string>& overrides) {
  toml::table doc;
  try {
    doc = toml::parse(toml_text, source);
  } catch (const toml::parse_error& e) {
    throw Error(fmt::format("{}:{}: {}", source, e.source().begin.line, e.description()));
  }
  for (const auto& o : overrides) apply_override(doc, o, source);
  RunConfig config;
  Reader reader(doc, source);
  sections(reader, config);
  reader.finish();
  validate(config, source);
  return config;
}

RunConfig read_run_config(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw_file_error(path, "cannot open the run file");
  std::stringstream text;
  text << in.rdbuf();
  toml::table doc;
  try {
    doc = toml::parse(text.str(), path.string());
  } catch (const toml::parse_error& e) {
    throw Error(fmt::format("{}:{}: {}", path.string(), e.source().begin.line, e.description()));
  }
  resolve_relative_paths(doc, std::filesystem::absolute(path).parent_path());
  std::ostringstream resolved;
  resolved << doc;
  return parse_run_config(resolved.str(), path.string(), overrides);
}

std::string to_toml(const RunConfig& config) {
  Writer writer;
  sections(writer, const_cast<RunConfig&>(config));
  std::ostringstream out;
  out << writer.doc() << "\n";
  return out.str();
}

namespace {

// Collects the [diagnose] thresholds below zero: such a threshold would flag every checkpoint.
struct NegativeThresholds {
  std::vector<std::string> keys;
  void operator()(const char* key, const double& value) {
    if (value < 0) keys.emplace_back(key);
  }
  void operator()(const char*, const bool&) {}
};

}  // namespace

void validate(const RunConfig& c, const std::string& source) {
  auto fail = [&](const std::string& problem) { throw Error(source + ": " + problem); };
  if (c.model.checkpoint.empty()) fail("model.checkpoint is required (the base model to fine-tune)");
  if (c.model.prediction != "epsilon" && c.model.prediction != "v_prediction")
    fail("model.prediction must be epsilon or v_prediction");
  if (c.data.folders.empty()) fail("data.folders lists no image folder");
  for (const auto& f : c.data.folders)
    if (f.repeats < 1) fail(fmt::format("data.folders: {} has repeats {} (at least 1)", f.path, f.repeats));
  if (c.data.resolution < 64 || c.data.resolution % 8) fail("data.resolution must be a multiple of 8, >= 64");
  if (c.data.bucket_step % 8 || c.data.bucket_step <= 0)
    fail("data.bucket_step must be a positive multiple of 8");
  if (c.data.crop != "center" && c.data.crop != "random") fail("data.crop must be center or random");
  if (c.data.batch_size < 1 || c.data.gradient_accumulation < 1)
    fail("data.batch_size and data.gradient_accumulation must be at least 1");
  if (c.data.caption_dropout < 0 || c.data.caption_dropout > 1)
    fail("data.caption_dropout must be in [0, 1]");
  for (const auto* part : {static_cast<const PartSection*>(&c.text_encoder), &c.unet}) {
    const auto name = part == &c.unet ? "unet" : "text_encoder";
    if (part->lr < 0) fail(fmt::format("{}.lr must be >= 0", name));
    const auto optimizers = optimizer_names(), schedules = lr_schedule_names();
    if (std::find(optimizers.begin(), optimizers.end(), part->optimizer) == optimizers.end())
      fail(fmt::format("{}.optimizer '{}' is not known ({})", name, part->optimizer,
                       fmt::join(optimizers, ", ")));
    if (std::find(schedules.begin(), schedules.end(), part->schedule) == schedules.end())
      fail(fmt::format("{}.schedule '{}' is not known ({})", name, part->schedule,
                       fmt::join(schedules, ", ")));
    if (part->schedule == "polynomial" && !(part->lr > part->schedule_end_lr))
      fail(fmt::format("{}.schedule polynomial needs lr above schedule_end_lr", name));
    if (part->schedule_cycles < 1) fail(fmt::format("{}.schedule_cycles must be at least 1", name));
    if (part->block_size < 1) fail(fmt::format("{}.block_size must be at least 1", name));
    if (part->warmup_steps < 0) fail(fmt::format("{}.warmup_steps must be >= 0", name));
  }
  if (!c.text_encoder.train && !c.unet.train)
    fail("neither text_encoder.train nor unet.train is on: nothing to train");
  if (c.text_encoder.clip_skip < 1) fail("text_encoder.clip_skip must be at least 1");
  if (c.noise.min_timestep < 0 || c.noise.max_timestep > 1000 || c.noise.min_timestep >= c.noise.max_timestep)
    fail("noise.min_timestep/max_timestep must satisfy 0 <= min < max <= 1000");
  if (c.training.epochs < 1) fail("training.epochs must be at least 1");
  if (c.training.on_nan != "stop" && c.training.on_nan != "skip") fail("training.on_nan must be stop or skip");
  if (c.training.mixed_precision != "no" && c.training.mixed_precision != "bf16" &&
      c.training.mixed_precision != "fp16")
    fail("training.mixed_precision must be no, bf16 or fp16");
  if (c.training.ema_decay < 0 || c.training.ema_decay >= 1) fail("training.ema_decay must be in [0, 1)");
  if (c.validation.split < 0 || c.validation.split >= 1) fail("validation.split must be in [0, 1)");
  if (c.checkpoints.dtype != "fp16" && c.checkpoints.dtype != "fp32" && c.checkpoints.dtype != "bf16")
    fail("checkpoints.dtype must be fp16, fp32 or bf16");
  if (c.checkpoints.layout != "ldm" && c.checkpoints.layout != "diffusers")
    fail("checkpoints.layout must be ldm or diffusers");
  if (c.checkpoints.keep_last_states < 0) fail("checkpoints.keep_last_states must be >= 0");
  if (c.checkpoints.save_retries < 0) fail("checkpoints.save_retries must be >= 0");
  if (c.checkpoints.save_retry_seconds < 0) fail("checkpoints.save_retry_seconds must be >= 0");
  if (c.data.min_bucket < 8 || c.data.min_bucket > c.data.max_bucket)
    fail("data.min_bucket must be at least 8 and not above data.max_bucket");
  if (c.data.keep_tags < 0) fail("data.keep_tags must be >= 0");
  if (c.validation.every_epochs < 0 || c.validation.stabilize_items < 0 ||
      c.validation.timesteps_per_item < 1)
    fail("validation.every_epochs and stabilize_items must be >= 0, timesteps_per_item >= 1");
  if (c.checkpoints.every_epochs < 0) fail("checkpoints.every_epochs must be >= 0");
  if (c.samples.steps < 1) fail("samples.steps must be at least 1");
  if (c.lora.enabled && (c.lora.rank < 1 || c.lora.alpha <= 0))
    fail("lora.rank must be >= 1 and lora.alpha > 0");
  NegativeThresholds negative;
  DiagnoseSection diagnose = c.diagnose;
  fields(negative, diagnose);
  if (!negative.keys.empty())
    fail(fmt::format("diagnose.{} must be >= 0 (a threshold is a size of change)", fmt::join(negative.keys, ", diagnose.")));
  const auto samplers = sampler_names();
  if (std::find(samplers.begin(), samplers.end(), c.samples.sampler) == samplers.end())
    fail(fmt::format("samples.sampler '{}' is not known ({})", c.samples.sampler, fmt::join(samplers, ", ")));
}

}  // namespace kiln
