// `kiln train` on the tiny model and a generated data set: the files a run leaves (checkpoints
// with their settings, samples, JSONL and TensorBoard logs, validation losses), exact resume, a
// switched-off part staying bit-identical, and noise that does not depend on the learning rates.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "data/synthetic.h"
#include "golden_compare.h"
#include "test_support.h"
#include "image/png.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "logging/metrics_log.h"
#include "logging/tensorboard.h"
#include "surgery/lora.h"
#include "train/ema.h"
#include "train/latent_cache.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "train/training_data.h"
#include "util/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

class TrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           fmt::format("kiln-train-{}-{}", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                       ::getpid());
    fs::remove_all(dir_);
    write_synthetic_dataset(dir_ / "data", 12, 64, 3);
    std::ofstream(dir_ / "prompts.txt") << "a red circle, white background\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  RunConfig config(const std::vector<std::string>& overrides = {}) const {
    const std::string text = fmt::format(R"(
[model]
checkpoint = "{}"
config = "{}"
[data]
folders = [{{ path = "{}", repeats = 2 }}]
resolution = 64
min_bucket = 32
max_bucket = 128
bucket_step = 32
random_flip = true
shuffle_tags = true
caption_dropout = 0.1
batch_size = 3
[text_encoder]
lr = 1e-4
[unet]
lr = 5e-5
warmup_steps = 2
schedule = "cosine"
[training]
epochs = 3
[validation]
split = 0.25
stabilize_items = 2
timesteps_per_item = 2
[checkpoints]
every_epochs = 2
dtype = "fp32"
[samples]
prompts = "{}"
steps = 3
width = 64
height = 64
seed = 9
)",
                                         test::tiny_model_path().string(), test::tiny_config_path().string(),
                                         (dir_ / "data").string(), (dir_ / "prompts.txt").string());
    return parse_run_config(text, "test.toml", overrides);
  }

  TrainResult run(const RunConfig& c, const fs::path& run_dir, bool resume = false,
                  std::function<bool()> stop = {}) const {
    TrainOptions options;
    options.run_dir = run_dir;
    options.resume = resume;
    options.stop_requested = std::move(stop);
    return train(c, options);
  }

  static StateDict weights(const fs::path& checkpoint) {
    const auto c = read_checkpoint(checkpoint, test::tiny_config_path());
    StateDict all;
    for (const auto& [k, v] : c.unet) all["unet." + k] = v;
    for (const auto& [k, v] : c.text_encoder) all["te." + k] = v;
    return all;
  }

  fs::path dir_;
};

TEST_F(TrainTest, ARunLeavesCheckpointsSamplesAndLogs) {
  const auto run_dir = dir_ / "run";
  const auto result = run(config(), run_dir);
  EXPECT_EQ(result.epochs_done, 3);
  // 9 training pictures x 2 repeats = 18 items in batches of 3 (buckets permitting) per epoch.
  EXPECT_GE(result.global_step, 3 * 6);
  ASSERT_EQ(result.checkpoints.size(), 2u);  // epoch 2 and the end
  EXPECT_EQ(result.checkpoints[0].filename(), "e0002.safetensors");
  EXPECT_EQ(result.checkpoints[1].filename(), "e0003.safetensors");

  // Checkpoints are SD files kiln reads back, carrying the run's settings.
  const auto checkpoint = read_checkpoint(result.checkpoints[1], test::tiny_config_path());
  EXPECT_EQ(checkpoint.metadata.at("kiln.epoch"), "3");
  const auto settings = parse_run_config(checkpoint.metadata.at("kiln.run_config"), "metadata");
  EXPECT_EQ(settings.unet.lr, 5e-5);
  EXPECT_EQ(to_toml(settings), to_toml(config()));
  EXPECT_EQ(to_toml(read_run_config(run_dir / "run.toml")), to_toml(config()));
  // The UNet and text encoder moved; the VAE did not.
  const auto base = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  const auto key = "conv_in.weight";
  EXPECT_FALSE(torch::equal(checkpoint.unet.at(key), base.unet.at(key).to(torch::kFloat32)));
  EXPECT_FALSE(torch::equal(checkpoint.text_encoder.at("text_model.final_layer_norm.weight"),
                            base.text_encoder.at("text_model.final_layer_norm.weight")));
  for (const auto& [name, tensor] : base.vae)
    EXPECT_TRUE(torch::equal(checkpoint.vae.at(name), tensor)) << name;

  // One sample per prompt at every checkpoint, with the prompt's fixed seed.
  for (const auto* name : {"e0002", "e0003"}) {
    const auto png = run_dir / "samples" / name / "00-9.png";
    ASSERT_TRUE(fs::exists(png)) << png;
    EXPECT_EQ(read_png(png).width, 64);
  }

  // Logs: validation and stabilised losses before training and after each epoch, every step's
  // loss and learning rates, the same values in TensorBoard.
  const auto lines = read_metrics_jsonl(run_dir / "metrics.jsonl");
  std::vector<int64_t> val_epochs;
  int64_t steps_logged = 0;
  for (const auto& line : lines) {
    if (line.contains("loss/val")) {
      val_epochs.push_back(line["epoch"].get<int64_t>());
      EXPECT_TRUE(line.contains("loss/stabilize-train"));
      EXPECT_GT(line["loss/val"].get<double>(), 0.0);
    }
    if (line.contains("loss/step")) {
      ++steps_logged;
      EXPECT_TRUE(line.contains("lr/unet") && line.contains("lr/text_encoder") &&
                  line.contains("grad_norm/unet"));
    }
  }
  EXPECT_EQ(val_epochs, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(steps_logged, result.global_step);
  std::vector<fs::path> events;
  for (const auto& entry : fs::directory_iterator(run_dir / "tensorboard")) events.push_back(entry.path());
  ASSERT_EQ(events.size(), 1u);
  std::map<std::string, int> tags;
  for (const auto& event : read_tensorboard_scalars(events[0])) ++tags[event.tag];
  EXPECT_EQ(tags["loss/step"], result.global_step);
  EXPECT_EQ(tags["loss/val"], 4);
  EXPECT_EQ(tags["loss/epoch"], 3);
  EXPECT_EQ(tags["lr/unet"], result.global_step);
  // Warm-up: the UNet's first step runs at learning rate 0, its third at the full rate's cosine.
  EXPECT_EQ(lines[1]["lr/unet"].get<double>(), 0.0);
}

// An interrupted run resumed from its last save ends with the same weights, to the bit, as a run
// that was never interrupted — also when it stopped in the middle of an epoch — with every optimizer
// (their states travel in the resume file).
class ResumeTest : public TrainTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(ResumeTest, InterruptedAndResumedRunEqualsUninterruptedRun) {
  const bool lora = GetParam() == "lora";  // a LoRA run with AdamW
  const auto optimizer = lora ? std::string("adamw") : GetParam();
  std::vector<std::string> overrides{"text_encoder.optimizer=" + optimizer, "unet.optimizer=" + optimizer};
  if (lora) overrides.insert(overrides.end(), {"lora.enabled=true", "text_encoder.lr=1e-3", "unet.lr=1e-3"});
  if (optimizer == "dadapt_adam" || optimizer == "prodigy") {
    // Rates are multipliers on the estimated step size; D-Adaptation turns 0.5 / 1.0 into layer scales.
    overrides.insert(
        overrides.end(),
        {"text_encoder.lr=" + std::string(optimizer == "prodigy" ? "1.0" : "0.5"), "unet.lr=1.0"});
  }
  if (optimizer == "adamw") overrides.push_back("training.ema_decay=0.9");
  const auto settings = config(overrides);
  const auto straight = run(settings, dir_ / "straight");
  int steps = 0;
  const auto first = run(settings, dir_ / "resumed", false, [&] { return ++steps == 8; });
  ASSERT_TRUE(first.interrupted);
  ASSERT_LT(first.global_step, straight.global_step);
  // It stopped inside an epoch: the save is named by epoch and batch.
  EXPECT_NE(first.checkpoints.back().filename().string().find("-b"), std::string::npos)
      << first.checkpoints.back();
  const auto second = run(settings, dir_ / "resumed", true);
  EXPECT_FALSE(second.interrupted);
  EXPECT_EQ(second.global_step, straight.global_step);
  if (lora) {
    const auto a = SafeTensorsFile::open(straight.checkpoints.back()),
               b = SafeTensorsFile::open(second.checkpoints.back());
    ASSERT_EQ(a.entries().size(), b.entries().size());
    for (const auto& entry : a.entries())
      EXPECT_TRUE(torch::equal(a.tensor(entry.name), b.tensor(entry.name))) << entry.name;
    // The averaged LoRA is saved beside each LoRA and resumed to the bit; it is not the raw one.
    const auto ema_a = SafeTensorsFile::open(dir_ / "straight" / "checkpoints" / "e0003-ema.safetensors"),
               ema_b = SafeTensorsFile::open(dir_ / "resumed" / "checkpoints" / "e0003-ema.safetensors");
    ASSERT_EQ(ema_a.entries().size(), a.entries().size());
    EXPECT_EQ(ema_a.metadata().at("kiln.ema_decay"), "0.9");
    bool differs = false;
    for (const auto& entry : ema_a.entries()) {
      EXPECT_TRUE(torch::equal(ema_a.tensor(entry.name), ema_b.tensor(entry.name))) << entry.name;
      differs = differs || !torch::equal(ema_a.tensor(entry.name), a.tensor(entry.name));
    }
    EXPECT_TRUE(differs);
    return;
  }
  const auto a = weights(straight.checkpoints.back()), b = weights(second.checkpoints.back());
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, tensor] : a)
    EXPECT_TRUE(torch::equal(tensor, b.at(name))) << optimizer << " " << name;
  EXPECT_FALSE(
      torch::equal(a.at("unet.conv_in.weight"), weights(test::tiny_model_path()).at("unet.conv_in.weight")))
      << optimizer << " did not train";
  if (optimizer == "adamw") {
    // The moving average too, and it differs from the raw weights.
    const auto ema_a = weights(dir_ / "straight" / "checkpoints" / "e0003-ema.safetensors");
    const auto ema_b = weights(dir_ / "resumed" / "checkpoints" / "e0003-ema.safetensors");
    for (const auto& [name, tensor] : ema_a) EXPECT_TRUE(torch::equal(tensor, ema_b.at(name))) << name;
    EXPECT_FALSE(torch::equal(ema_a.at("unet.conv_in.weight"), a.at("unet.conv_in.weight")));
  }
  // The per-step losses after the resume point repeat the uninterrupted run's.
  std::map<int64_t, double> loss_a, loss_b;
  for (const auto& line : read_metrics_jsonl(dir_ / "straight" / "metrics.jsonl"))
    if (line.contains("loss/step")) loss_a[line["step"]] = line["loss/step"];
  for (const auto& line : read_metrics_jsonl(dir_ / "resumed" / "metrics.jsonl"))
    if (line.contains("loss/step")) loss_b[line["step"]] = line["loss/step"];
  for (const auto& [step, loss] : loss_a) EXPECT_EQ(loss_b.at(step), loss) << optimizer << " step " << step;
}

INSTANTIATE_TEST_SUITE_P(EveryOptimizer, ResumeTest,
                         ::testing::Values("adamw", "adamw8bit", "lion", "sgd", "dadapt_adam", "prodigy",
                                           "lora"));

// D-Adaptation over both parts is one optimizer with two groups; its d is logged per part.
// The burn watch: the base's samples are drawn before the first step, every checkpoint is compared
// with them, the values are logged, a crossed sign is a warning naming the part, and
// stop_when_burnt ends the run after that checkpoint. A frozen text encoder has no prompt drift.
TEST_F(TrainTest, TheBurnWatchWarnsAndStopsABurningRun) {
  std::ofstream(dir_ / "prompts.json")
      << R"([{"prompt": "a red circle, white background", "batch": 2}, "kilnglaze style, a blue square"])";
  const auto run_dir = dir_ / "run";
  std::ostringstream console;
  TrainOptions options;
  options.run_dir = run_dir;
  options.console = &console;
  // The golden tiny model draws noise-like pictures that a UNet at 5e-2 moves by about 0.1 RMS per
  // cell: the control-change threshold is lowered under that.
  const auto c = config({"unet.lr=5e-2", "text_encoder.train=false", "training.epochs=4", "checkpoints.every_epochs=1",
                         "data.activation_phrase='kilnglaze style'", "diagnose.stop_when_burnt=true",
                         "diagnose.control_change=0.05",
                         "samples.prompts='" + (dir_ / "prompts.json").string() + "'"});
  const auto result = train(c, options);
  EXPECT_TRUE(fs::is_regular_file(run_dir / "samples" / "base" / "00-9.png"));
  EXPECT_TRUE(fs::is_regular_file(run_dir / "samples" / "base" / "00-10.png"));
  const std::string log = test::read_bytes(run_dir / "metrics.jsonl");
  for (const char* tag : {"diagnose/change_control", "diagnose/change_styled", "diagnose/style_bleed",
                          "diagnose/burn_score"})
    EXPECT_NE(log.find(tag), std::string::npos) << tag;
  EXPECT_NE(log.find("\"diagnose/prompt_drift\":0.0"), std::string::npos) << log;
  // At 5e-2 the UNet wrecks the tiny model's pictures at once.
  ASSERT_TRUE(result.stopped_burnt) << console.str();
  EXPECT_EQ(result.epochs_done, 1);
  EXPECT_NE(console.str().find("[diagnose] warning: e0001: UNet burning: control pictures changed"), std::string::npos)
      << console.str();
  EXPECT_NE(console.str().find("text encoder frozen"), std::string::npos) << console.str();
  // The run resumes like an interrupted one, reading the base's samples back.
  std::ostringstream again;
  options.console = &again;
  options.resume = true;
  auto go_on = c;
  go_on.diagnose.stop_when_burnt = false;
  const auto resumed = train(go_on, options);
  EXPECT_EQ(resumed.epochs_done, 4);
  EXPECT_EQ(again.str().find("drawing the base model's samples"), std::string::npos) << again.str();
}

TEST_F(TrainTest, DAdaptationSharesOneEstimateAndLogsD) {
  run(config({"text_encoder.optimizer=dadapt_adam", "unet.optimizer=dadapt_adam", "text_encoder.lr=0.5",
              "unet.lr=1.0", "training.epochs=1", "samples.prompts=''"}),
      dir_ / "dadapt");
  int logged = 0;
  for (const auto& line : read_metrics_jsonl(dir_ / "dadapt" / "metrics.jsonl")) {
    if (!line.contains("d/unet")) continue;
    EXPECT_EQ(line["d/unet"], line["d/text_encoder"]);  // one shared estimate
    EXPECT_EQ(line["lr/unet"], line["lr/text_encoder"]);
    ++logged;
  }
  EXPECT_GT(logged, 0);
  const auto state = SafeTensorsFile::open(dir_ / "dadapt" / "checkpoints" / "e0001.state.safetensors");
  EXPECT_TRUE(state.contains("optimizer.shared.dadapt_adam.d"));
}

// bitsandbytes-style 8-bit AdamW keeps the loss curve of fp32 AdamW on the tiny model.
TEST_F(TrainTest, EightBitAdamWLossCurveStaysNearAdamW) {
  std::map<std::string, std::vector<double>> curves;
  for (const std::string optimizer : {"adamw", "adamw8bit"}) {
    run(config({"text_encoder.optimizer=" + optimizer, "unet.optimizer=" + optimizer, "training.epochs=4",
                "samples.prompts=''", "checkpoints.every_epochs=0"}),
        dir_ / optimizer);
    for (const auto& line : read_metrics_jsonl(dir_ / optimizer / "metrics.jsonl"))
      if (line.contains("loss/stabilize-train")) curves[optimizer].push_back(line["loss/stabilize-train"]);
  }
  ASSERT_EQ(curves["adamw"].size(), 5u);
  // The stabilised loss (fixed noise) falls with both, and the two stay within 2 % of each other.
  EXPECT_LT(curves["adamw"].back(), curves["adamw"].front());
  for (size_t i = 0; i < curves["adamw"].size(); ++i)
    EXPECT_NEAR(curves["adamw8bit"][i], curves["adamw"][i], 0.02 * curves["adamw"][i]) << "epoch " << i;
}

TEST_F(TrainTest, ASwitchedOffPartStaysBitIdentical) {
  // Without a console the trainer is quiet: no progress bar on stderr either.
  testing::internal::CaptureStderr();
  const auto result =
      run(config({"text_encoder.train=false", "training.epochs=1", "checkpoints.every_epochs=0"}),
          dir_ / "unet-only");
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  const auto trained = read_checkpoint(result.checkpoints.back(), test::tiny_config_path());
  const auto base = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  for (const auto& [name, tensor] : base.text_encoder)
    EXPECT_TRUE(torch::equal(trained.text_encoder.at(name), tensor.to(torch::kFloat32))) << name;
  EXPECT_FALSE(torch::equal(trained.unet.at("conv_in.weight"), base.unet.at("conv_in.weight")));
  // No optimizer state and no weights for the text encoder in the resume state.
  const auto state = SafeTensorsFile::open(dir_ / "unet-only" / "checkpoints" / "e0001.state.safetensors");
  for (const auto& entry : state.entries())
    EXPECT_EQ(entry.name.find("text_encoder"), std::string::npos) << entry.name;
  EXPECT_EQ(state.metadata().at("kiln.trained_parts"), "unet");
}

// bf16 autocast (libtorch 1.13 runs it on the CPU): the loss follows the fp32 run's closely, the
// trained weights stay fp32 (master weights), and the frozen text encoder and the VAE, stored at
// bf16 during the run, reach the checkpoint bit-identical to the base.
TEST_F(TrainTest, Bf16MixedPrecisionFollowsFp32AndKeepsFrozenPartsExact) {
  const std::vector<std::string> common{"text_encoder.train=false", "training.epochs=2",
                                        "checkpoints.every_epochs=0", "samples.prompts=''"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), common.begin(), common.end());
    return config(extra);
  };
  run(with({}), dir_ / "fp32");
  const auto result = run(with({"training.mixed_precision=bf16"}), dir_ / "bf16");
  auto losses = [&](const char* name, const char* key) {
    std::vector<double> out;
    for (const auto& line : read_metrics_jsonl(dir_ / name / "metrics.jsonl"))
      if (line.contains(key)) out.push_back(line[key]);
    return out;
  };
  const auto fp32 = losses("fp32", "loss/step"), bf16 = losses("bf16", "loss/step");
  ASSERT_EQ(fp32.size(), bf16.size());
  ASSERT_GE(fp32.size(), 4u);
  // bf16 keeps 8 bits of mantissa: the step losses stay within 5 % of fp32.
  double worst = 0;
  for (size_t i = 0; i < fp32.size(); ++i) {
    EXPECT_NEAR(bf16[i], fp32[i], 0.05 * fp32[i]) << "step " << i + 1;
    EXPECT_NE(bf16[i], fp32[i]) << "step " << i + 1 << ": autocast was not on";
    worst = std::max(worst, std::abs(bf16[i] / fp32[i] - 1));
  }
  std::cout << "bf16 vs fp32: largest relative step-loss difference " << worst << "\n";
  const auto val32 = losses("fp32", "loss/val"), val16 = losses("bf16", "loss/val");
  ASSERT_EQ(val32.size(), val16.size());
  for (size_t i = 0; i < val32.size(); ++i) EXPECT_NEAR(val16[i], val32[i], 0.05 * val32[i]);

  const auto trained = read_checkpoint(result.checkpoints.back(), test::tiny_config_path());
  const auto base = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  for (const auto& [name, tensor] : base.text_encoder)
    EXPECT_TRUE(torch::equal(trained.text_encoder.at(name), tensor.to(torch::kFloat32))) << name;
  for (const auto& [name, tensor] : base.vae)
    EXPECT_TRUE(torch::equal(trained.vae.at(name), tensor.to(torch::kFloat32))) << name;
  EXPECT_FALSE(torch::equal(trained.unet.at("conv_in.weight"), base.unet.at("conv_in.weight")));
  // The resume state holds fp32 master weights.
  const auto state = SafeTensorsFile::open(dir_ / "bf16" / "checkpoints" / "e0002.state.safetensors");
  EXPECT_EQ(state.tensor("weights.unet.conv_in.weight").scalar_type(), torch::kFloat32);
}

TEST_F(TrainTest, Fp16OnTheCpuIsRefusedBeforeAnyWork) {
  const auto message = test::error_of([&] {
    run(config({"training.mixed_precision=fp16", "training.epochs=1"}), dir_ / "fp16");
  });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find("fp16 needs a CUDA device"), std::string::npos) << *message;
  EXPECT_FALSE(fs::exists(dir_ / "fp16" / "checkpoints"));
  const auto bad = test::error_of([&] { config({"training.mixed_precision=fp8"}); });
  ASSERT_TRUE(bad.has_value());
  EXPECT_NE(bad->find("training.mixed_precision must be no, bf16 or fp16"), std::string::npos) << *bad;
}

// Two runs that differ in learning rates or in which part trains see the same data, noise and
// timesteps: their first step (same weights) has the same loss to the bit, and their epoch-0
// validation losses agree.
TEST_F(TrainTest, NoiseAndDataDoNotDependOnLearningRatesOrParts) {
  const std::vector<std::string> one_epoch{"training.epochs=1", "checkpoints.every_epochs=0",
                                           "samples.prompts=''"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), one_epoch.begin(), one_epoch.end());
    return config(extra);
  };
  run(with({}), dir_ / "a");
  run(with({"unet.lr=1e-3", "text_encoder.lr=0.0", "unet.warmup_steps=0"}), dir_ / "b");
  run(with({"text_encoder.train=false"}), dir_ / "c");
  auto first = [&](const char* name) {
    std::map<std::string, double> out;
    for (const auto& line : read_metrics_jsonl(dir_ / name / "metrics.jsonl")) {
      if (line.contains("loss/val") && !out.count("val")) out["val"] = line["loss/val"];
      if (line.contains("loss/step") && !out.count("step")) out["step"] = line["loss/step"];
      if (line.contains("loss/step") && line["step"] == 2) out["step2"] = line["loss/step"];
    }
    return out;
  };
  const auto a = first("a"), b = first("b"), c = first("c");
  EXPECT_EQ(a.at("val"), b.at("val"));
  EXPECT_EQ(a.at("val"), c.at("val"));
  EXPECT_EQ(a.at("step"), b.at("step"));
  EXPECT_EQ(a.at("step"), c.at("step"));
  EXPECT_NE(a.at("step2"), b.at("step2"));  // after one update the runs part ways
}

// Latents are computed once per picture, bucket, flip and VAE; a changed picture or VAE is never
// served a stale latent.
TEST_F(TrainTest, LatentCacheIsReusedAndInvalidated) {
  auto models = test::load_tiny_models();
  const auto c = config();
  std::ostringstream warnings;
  const auto data = prepare_training_data(c, warnings);
  const auto& item = data.train.front();
  const auto cache_dir = dir_ / "cache";
  DiagonalGaussian first;
  {
    LatentCache cache(cache_dir, models.vae, false, 1);
    first = cache.get(item, false);
    cache.get(item, true);
    cache.get(item, false);
    EXPECT_EQ(cache.encoded(), 2);  // plain and flipped; the third call came from memory
  }
  {
    LatentCache cache(cache_dir, models.vae, false, 1);
    EXPECT_TRUE(torch::equal(cache.get(item, false).mean, first.mean));
    EXPECT_EQ(cache.encoded(), 0);  // read back from disk
  }
  // The VAE changes: everything is encoded again.
  {
    torch::NoGradGuard no_grad;
    models.vae->named_parameters()[0].value().add_(0.01);
  }
  {
    LatentCache cache(cache_dir, models.vae, false, 1);
    EXPECT_FALSE(torch::equal(cache.get(item, false).mean, first.mean));
    EXPECT_EQ(cache.encoded(), 1);
  }
  // The picture changes (new content, new modification time): encoded again.
  write_synthetic_dataset(dir_ / "other", 1, 64, 99);
  fs::copy_file(dir_ / "other" / "0000.png", item.image, fs::copy_options::overwrite_existing);
  fs::last_write_time(item.image, fs::last_write_time(item.image) + std::chrono::seconds(5));
  LatentCache cache(cache_dir, models.vae, false, 1);
  cache.get(item, false);
  EXPECT_EQ(cache.encoded(), 1);
}

TEST_F(TrainTest, DiffusersLayoutCheckpointsOnRequest) {
  const auto result = run(config({"training.epochs=1", "checkpoints.layout=diffusers", "samples.prompts=''",
                                  "validation.split=0.0", "validation.stabilize_items=0"}),
                          dir_ / "diffusers");
  ASSERT_EQ(result.checkpoints.size(), 1u);
  EXPECT_TRUE(fs::is_directory(result.checkpoints[0]));
  EXPECT_TRUE(fs::exists(result.checkpoints[0] / "unet" / "diffusion_pytorch_model.safetensors"));
  const auto checkpoint = read_checkpoint(result.checkpoints[0]);
  EXPECT_EQ(checkpoint.layout, CheckpointLayout::Diffusers);
  // No validation set and no stabilised subset: no validation values logged.
  for (const auto& line : read_metrics_jsonl(dir_ / "diffusers" / "metrics.jsonl"))
    EXPECT_FALSE(line.contains("loss/val"));
}

// A v-prediction run says so in what it writes: the LDM file's model-spec metadata, read back as a
// v model (so kiln sample, grid and diagnose draw it as one), and a folder's scheduler config.
TEST_F(TrainTest, VPredictionRunsWriteVModels) {
  const auto c = config({"training.epochs=1", "model.prediction='v_prediction'", "samples.prompts=''",
                         "validation.split=0.0", "validation.stabilize_items=0"});
  const auto ldm = run(c, dir_ / "ldm");
  ASSERT_EQ(ldm.checkpoints.size(), 1u);
  const auto file = read_checkpoint(ldm.checkpoints[0]);
  EXPECT_EQ(file.metadata.at(std::string(kPredictionMetadataKey)), "v");
  EXPECT_EQ(file.scheduler.prediction, Prediction::V);
  auto folder_config = c;
  folder_config.checkpoints.layout = "diffusers";
  const auto folder = run(folder_config, dir_ / "folder");
  ASSERT_EQ(folder.checkpoints.size(), 1u);
  EXPECT_EQ(read_checkpoint(folder.checkpoints[0]).scheduler.prediction, Prediction::V);
  EXPECT_EQ(read_checkpoint(folder.checkpoints[0]).scheduler.timestep_spacing, "leading");
}

// A LoRA run trains only the low-rank matrices: its checkpoints are kohya LoRA files with the same
// modules, names and shapes as a kohya-made LoRA of this model (golden lora.safetensors), the base
// weights stay untouched, and the stabilised loss falls.
TEST_F(TrainTest, LoraRunWritesKohyaFilesAndLearns) {
  const auto result =
      run(config({"lora.enabled=true", "lora.rank=4", "lora.alpha=2.0", "text_encoder.lr=1e-3",
                  "unet.lr=1e-3", "training.epochs=4", "checkpoints.every_epochs=0", "samples.prompts=''",
                  "checkpoints.dtype=fp16"}),
          dir_ / "lora");
  ASSERT_EQ(result.checkpoints.size(), 1u);
  const auto lora = SafeTensorsFile::open(result.checkpoints[0]);
  const auto golden = test::golden_file("lora.safetensors");
  ASSERT_EQ(lora.entries().size(), golden.entries().size());  // 210 modules x (down, up, alpha)
  for (const auto& entry : golden.entries()) {
    ASSERT_TRUE(lora.contains(entry.name)) << entry.name;
    EXPECT_EQ(lora.tensor(entry.name).sizes(), golden.tensor(entry.name).sizes()) << entry.name;
    EXPECT_EQ(lora.tensor(entry.name).scalar_type(), torch::kFloat16) << entry.name;
  }
  EXPECT_EQ(lora.tensor("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha").item<float>(), 2.0f);
  EXPECT_EQ(lora.metadata().at("ss_network_module"), "networks.lora");
  EXPECT_EQ(lora.metadata().at("ss_network_dim"), "4");
  // The up matrices moved away from their zero start.
  EXPECT_GT(lora.tensor("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight")
                .abs()
                .max()
                .item<float>(),
            0.0f);
  std::vector<double> stabilised;
  for (const auto& line : read_metrics_jsonl(dir_ / "lora" / "metrics.jsonl"))
    if (line.contains("loss/stabilize-train")) stabilised.push_back(line["loss/stabilize-train"]);
  ASSERT_EQ(stabilised.size(), 5u);
  EXPECT_LT(stabilised.back(), stabilised.front());
  // kiln's own LoRA reader resolves every module of the file against the model.
  const auto base = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  EXPECT_EQ(read_lora(result.checkpoints[0], base).modules.size(), 210u);
}

// Rank and module dropout draw their masks from the seed and the step: repeatable, and different
// from a run without them.
TEST_F(TrainTest, LoraDropoutIsRepeatable) {
  auto lora_run = [&](const std::string& name, const std::string& rank_dropout) {
    return run(config({"lora.enabled=true", "lora.rank_dropout=" + rank_dropout, "lora.module_dropout=0.2",
                       "unet.lr=1e-3", "text_encoder.lr=1e-3", "training.epochs=1", "samples.prompts=''",
                       "validation.split=0.0", "validation.stabilize_items=0"}),
               dir_ / name)
        .checkpoints.at(0);
  };
  const auto a = SafeTensorsFile::open(lora_run("a", "0.5")), b = SafeTensorsFile::open(lora_run("b", "0.5"));
  const auto c = SafeTensorsFile::open(lora_run("c", "0.0"));
  int differing = 0;
  for (const auto& entry : a.entries()) {
    EXPECT_TRUE(torch::equal(a.tensor(entry.name), b.tensor(entry.name))) << entry.name;
    differing += torch::equal(a.tensor(entry.name), c.tensor(entry.name)) ? 0 : 1;
  }
  EXPECT_GT(differing, 100) << "of " << a.entries().size();
}

TEST(ExponentialMovingAverage, FollowsTheFormulaAndSwaps) {
  auto w = torch::ones({3}).requires_grad_(true);
  ExponentialMovingAverage ema({{"w", w}}, 0.5);
  {
    torch::NoGradGuard no_grad;
    w.fill_(3.0);
  }
  ema.update();  // 0.5·1 + 0.5·3
  EXPECT_TRUE(torch::equal(ema.state().at("w"), torch::full({3}, 2.0)));
  {
    torch::NoGradGuard no_grad;
    w.fill_(4.0);
  }
  ema.update();  // 0.5·2 + 0.5·4
  ema.swap_in();
  EXPECT_TRUE(torch::equal(w, torch::full({3}, 3.0)));
  ema.swap_out();
  EXPECT_TRUE(torch::equal(w, torch::full({3}, 4.0)));
}

TEST(ResumeState, MalformedCounterNamesTheFileAndTheKey) {
  const auto run_dir = test::fresh_temp_dir("kiln-state");
  const auto state = run_dir / "checkpoints" / "e0001.state.safetensors";
  std::filesystem::create_directories(state.parent_path());
  SafeTensorsWriteOptions options;
  options.metadata = {{"kiln.global_step", "12a"}};
  save_safetensors(state, {{"x", torch::zeros({1})}}, options);
  const auto error = test::error_of([&] { latest_state(run_dir); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(*error, state.string() + ": metadata kiln.global_step is '12a', not a whole number (a damaged or foreign "
                                     "resume state)");
  std::filesystem::remove_all(run_dir);
}

TEST(RunConfig, OverridesUnknownKeysAndRoundTrip) {
  const std::string text = "[model]\ncheckpoint = \"m.safetensors\"\n[data]\nfolders = [\"d\"]\n";
  auto c = parse_run_config(
      text, "r.toml",
      {"unet.lr=2e-7", "text_encoder.train=false", "samples.sampler=euler_a", "checkpoints.epochs=[5, 10]"});
  EXPECT_EQ(c.unet.lr, 2e-7);
  EXPECT_FALSE(c.text_encoder.train);
  EXPECT_EQ(c.samples.sampler, "euler_a");
  EXPECT_EQ(c.checkpoints.epochs, (std::vector<int64_t>{5, 10}));
  EXPECT_EQ(c.data.folders[0].path, "d");
  EXPECT_EQ(to_toml(parse_run_config(to_toml(c), "again")), to_toml(c));
  auto message = [&](const std::string& body, const std::vector<std::string>& overrides = {}) {
    try {
      parse_run_config(body, "r.toml", overrides);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message(text + "[unet]\nlearning_rate = 1\n"),
            "r.toml: unet.learning_rate is not a setting of [unet]; did you mean lr? (see docs/run-file.md)");
  EXPECT_EQ(message(text + "[unet]\nwarmup_step = 1\n"),
            "r.toml: unet.warmup_step is not a setting of [unet]; did you mean warmup_steps? (see docs/run-file.md)");
  EXPECT_EQ(message(text + "[unet]\nbanana = 1\n"),
            "r.toml: unet.banana is not a setting of [unet] (see docs/run-file.md)");
  EXPECT_NE(message(text + "[trainig]\n").find("unknown section [trainig]; did you mean training?"),
            std::string::npos);
  EXPECT_EQ(message(text + "[unet]\nlr = \"fast\"\n"), "r.toml: unet.lr must be a number");
  EXPECT_NE(message(text + "[sampling]\n").find("unknown section [sampling]"), std::string::npos);
  EXPECT_NE(message(text, {"unet.train=false", "text_encoder.train=false"}).find("nothing to train"),
            std::string::npos);
  EXPECT_NE(message("[data]\nfolders = [\"d\"]\n").find("model.checkpoint is required"), std::string::npos);
  EXPECT_NE(message(text, {"unetlr=1"}).find("must read section.key=value"), std::string::npos);
  EXPECT_EQ(message(text, {"diagnose.style_bleed=-0.1", "diagnose.prompt_drift=-1"}),
            "r.toml: diagnose.style_bleed, diagnose.prompt_drift must be >= 0 (a threshold is a size of change)");
}

}  // namespace
}  // namespace kiln
