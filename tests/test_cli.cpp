// End-to-end tests of the `kiln` command line on the tiny reference model: exit codes, messages,
// JSON output and files written, exactly as a user's script would see them.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "data/synthetic.h"
#include "image/gif.h"
#include "image/png.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "pipeline/a1111_parameters.h"
#include "test_support.h"
#include "util/sha256.h"

namespace fs = std::filesystem;

namespace {

using kiln::test::run_kiln;

const fs::path kGolden = KILN_GOLDEN_DIR;
const fs::path kTinyModel = kGolden / "tiny-sd" / "model.safetensors";
const fs::path kTinyConfig = kGolden / "tiny-sd" / "diffusers-configs";

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kiln-cli-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "-" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string config_arg() const { return "--config " + kTinyConfig.string(); }
  fs::path dir_;
};

bool same_tensors(const fs::path& a, const fs::path& b, std::string* why) {
  auto fa = kiln::SafeTensorsFile::open(a), fb = kiln::SafeTensorsFile::open(b);
  if (fa.entries().size() != fb.entries().size()) {
    *why = "tensor counts differ";
    return false;
  }
  for (const auto& e : fa.entries()) {
    if (!fb.contains(e.name)) {
      *why = "missing " + e.name;
      return false;
    }
    auto ta = fa.tensor(e.name), tb = fb.tensor(e.name);
    if (ta.scalar_type() != tb.scalar_type() || !torch::equal(ta, tb)) {
      *why = "tensor differs: " + e.name;
      return false;
    }
  }
  return true;
}

TEST_F(CliTest, InspectReportsComponentsAndHashes) {
  auto r = run_kiln("inspect " + kTinyModel.string() + " " + config_arg() + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["layout"], "ldm");
  EXPECT_EQ(j["components"]["unet"]["tensors"], 684);
  EXPECT_EQ(j["components"]["unet"]["parameters"], 3222692);
  EXPECT_EQ(j["components"]["text_encoder"]["parameters"], 1609216);
  EXPECT_EQ(j["components"]["vae"]["parameters"], 1732679);
  const std::string sha = kiln::sha256_file(kTinyModel);
  EXPECT_EQ(j["sha256"], sha);
  EXPECT_EQ(j["autov2_hash"], sha.substr(0, 10));
  EXPECT_EQ(j["legacy_hash"], kiln::a1111_legacy_hash(kTinyModel));

  auto human = run_kiln("inspect " + kTinyModel.string() + " " + config_arg());
  ASSERT_EQ(human.exit_code, 0) << human.output;
  EXPECT_NE(human.output.find("3,222,692"), std::string::npos) << human.output;
  EXPECT_NE(human.output.find(sha.substr(0, 10)), std::string::npos) << human.output;
}

TEST_F(CliTest, ConvertRoundTripIsBitExact) {
  const auto folder = dir_ / "tiny-diffusers", back = dir_ / "back.safetensors";
  auto r1 = run_kiln("convert " + kTinyModel.string() + " " + folder.string() + " --layout diffusers " +
                     config_arg());
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  EXPECT_TRUE(fs::exists(folder / "unet" / "diffusion_pytorch_model.safetensors"));
  EXPECT_TRUE(fs::exists(folder / "model_index.json"));
  // The folder carries its own config: no --config needed on the way back.
  auto r2 = run_kiln("convert " + folder.string() + " " + back.string() + " --layout ldm");
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  std::string why;
  EXPECT_TRUE(same_tensors(kTinyModel, back, &why)) << why;
  // A folder has no A1111 hash (A1111 hashes one file): inspect says so instead of promising one.
  auto inspected = run_kiln("inspect " + folder.string() + " --json");
  ASSERT_EQ(inspected.exit_code, 0) << inspected.output;
  const auto j = nlohmann::json::parse(inspected.output);
  EXPECT_TRUE(j["autov2_hash"].is_null());
  EXPECT_FALSE(j.contains("sha256"));
  EXPECT_NE(j["a1111_hash_note"].get<std::string>().find("kiln convert FOLDER model.safetensors"), std::string::npos);
}

TEST_F(CliTest, ConvertToHalfPrecisionAndBack) {
  const auto half = dir_ / "half.safetensors", folder = dir_ / "half-diffusers",
             back = dir_ / "half2.safetensors";
  ASSERT_EQ(run_kiln("convert " + kTinyModel.string() + " " + half.string() + " --layout ldm --dtype fp16 " +
                     config_arg())
                .exit_code,
            0);
  auto f = kiln::SafeTensorsFile::open(half);
  EXPECT_EQ(f.tensor("model.diffusion_model.out.2.weight").scalar_type(), torch::kHalf);
  EXPECT_EQ(f.tensor("cond_stage_model.transformer.text_model.embeddings.position_ids").scalar_type(),
            torch::kLong);
  ASSERT_EQ(run_kiln("convert " + half.string() + " " + folder.string() +
                     " --layout diffusers --dtype fp16 " + config_arg())
                .exit_code,
            0);
  ASSERT_EQ(
      run_kiln("convert " + folder.string() + " " + back.string() + " --layout ldm --dtype fp16").exit_code,
      0);
  std::string why;
  EXPECT_TRUE(same_tensors(half, back, &why)) << why;
}

TEST_F(CliTest, InitTinyMakesALoadableModel) {
  const auto out = dir_ / "init.safetensors";
  auto r = run_kiln("init " + out.string() + " --arch tiny --seed 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto f = kiln::SafeTensorsFile::open(out);
  auto reference = kiln::SafeTensorsFile::open(kTinyModel);
  ASSERT_EQ(f.entries().size(), reference.entries().size());
  for (const auto& e : reference.entries()) {
    ASSERT_TRUE(f.contains(e.name)) << e.name;
    EXPECT_EQ(f.find(e.name)->shape, e.shape) << e.name;
  }
  // Same seed, same weights; another seed, other weights.
  const auto again = dir_ / "again.safetensors", other = dir_ / "other.safetensors";
  ASSERT_EQ(run_kiln("init " + again.string() + " --arch tiny --seed 3").exit_code, 0);
  ASSERT_EQ(run_kiln("init " + other.string() + " --arch tiny --seed 4").exit_code, 0);
  std::string why;
  EXPECT_TRUE(same_tensors(out, again, &why)) << why;
  EXPECT_FALSE(same_tensors(out, other, &why));
  auto inspected = run_kiln("inspect " + out.string() + " " + config_arg() + " --json");
  ASSERT_EQ(inspected.exit_code, 0) << inspected.output;
}

TEST_F(CliTest, MissingFileFailsWithItsName) {
  const auto missing = dir_ / "nope.safetensors";
  auto r = run_kiln("inspect " + missing.string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(missing.string()), std::string::npos) << r.output;
}

TEST_F(CliTest, InvalidThreadCountIsAnErrorNamingTheVariable) {
  for (const std::string value : {"two", "0", "8x", ""}) {
    ::setenv("KILN_THREADS", value.c_str(), 1);
    auto r = run_kiln("inspect " + kTinyModel.string() + " " + config_arg());
    ::unsetenv("KILN_THREADS");
    EXPECT_EQ(r.exit_code, 1) << value;
    EXPECT_NE(r.output.find("KILN_THREADS=" + value + " is not a number of threads"), std::string::npos) << r.output;
  }
}

// An output into a folder that does not exist fails before any work, naming that folder.
TEST_F(CliTest, MissingOutputFolderIsNamedBeforeAnyWork) {
  const auto missing = dir_ / "no-such-folder";
  for (const std::string& command :
       {"lora extract " + kTinyModel.string() + " " + kTinyModel.string() + " --rank 4 " + config_arg() + " --out ",
        "convert " + kTinyModel.string() + " " + config_arg() + " ",
        "merge " + kTinyModel.string() + " " + kTinyModel.string() + " --alpha 0.5 " + config_arg() + " --out "}) {
    auto r = run_kiln(command + (missing / "x.safetensors").string());
    EXPECT_EQ(r.exit_code, 1) << command;
    EXPECT_NE(r.output.find("the folder " + missing.string() + " does not exist"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find(".tmp"), std::string::npos) << r.output;
  }
  EXPECT_FALSE(fs::exists(missing));
}

TEST_F(CliTest, TruncatedFileFailsAndWritesNothing) {
  const auto truncated = dir_ / "truncated.safetensors", out = dir_ / "out.safetensors";
  fs::copy_file(kTinyModel, truncated);
  fs::resize_file(truncated, fs::file_size(truncated) / 2);
  auto r = run_kiln("convert " + truncated.string() + " " + out.string() + " --layout ldm " + config_arg());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(truncated.string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
}

TEST_F(CliTest, OtherArchitecturesAreNamed) {
  const auto sdxl = dir_ / "sdxl.safetensors";
  kiln::save_safetensors(
      sdxl, {{"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", torch::ones({768})},
             {"model.diffusion_model.label_emb.0.0.weight", torch::ones({4, 4})}});
  auto r = run_kiln("inspect " + sdxl.string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(sdxl.string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("SDXL"), std::string::npos) << r.output;
}

TEST_F(CliTest, ExistingOutputIsKeptWhenConversionFails) {
  const auto out = dir_ / "keep.safetensors";
  { std::ofstream(out) << "precious"; }
  auto r =
      run_kiln("convert " + (dir_ / "missing.safetensors").string() + " " + out.string() + " --layout ldm");
  EXPECT_NE(r.exit_code, 0);
  std::ifstream in(out);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

std::string tiny_sample_args(const std::string& size = "-W 64 -H 96") {
  return "--model " + kTinyModel.string() + " --config " + kTinyConfig.string() + " " + size + " --steps 3";
}

TEST_F(CliTest, SampleWritesPngsWithA1111Parameters) {
  auto r = run_kiln(
      "sample " + tiny_sample_args() + " --prompt 'a photo of a (red:1.2) circle' --negative blurry" +
      " --sampler euler_a --seed 42 --batch 2 --cfg 6.5 --clip-skip 2 --out " + (dir_ / "out").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("3/3 steps"), std::string::npos) << r.output;  // the progress line
  for (const auto& [name, seed] : {std::pair{"00000-42.png", "42"}, std::pair{"00001-43.png", "43"}}) {
    const auto path = dir_ / "out" / name;
    ASSERT_TRUE(fs::exists(path)) << r.output;
    const auto image = kiln::read_png(path);
    EXPECT_EQ(image.width, 64);
    EXPECT_EQ(image.height, 96);
    const auto text = kiln::read_png_text(path);
    ASSERT_EQ(text.size(), 1u);
    EXPECT_EQ(text[0].first, "parameters");
    const auto fields = kiln::parse_a1111_parameters(text[0].second);
    EXPECT_EQ(fields.at("Prompt"), "a photo of a (red:1.2) circle");
    EXPECT_EQ(fields.at("Negative prompt"), "blurry");
    EXPECT_EQ(fields.at("Sampler"), "Euler a");
    EXPECT_EQ(fields.at("Seed"), seed);
    EXPECT_EQ(fields.at("Size"), "64x96");
    EXPECT_EQ(fields.at("CFG scale"), "6.5");
    EXPECT_EQ(fields.at("Clip skip"), "2");
    EXPECT_EQ(fields.at("Model"), "model");
    EXPECT_EQ(fields.at("Model hash"), kiln::sha256_file(kTinyModel).substr(0, 10));
  }
  // Seed 43 alone gives the batch's second image (up to the rounding of batched GEMMs: one level),
  // numbered after the existing files.
  r = run_kiln("sample " + tiny_sample_args() +
               " --prompt 'a photo of a (red:1.2) circle' --negative blurry" +
               " --sampler euler_a --seed 43 --cfg 6.5 --clip-skip 2 --out " + (dir_ / "out").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto alone = kiln::read_png(dir_ / "out" / "00002-43.png").pixels;
  const auto in_batch = kiln::read_png(dir_ / "out" / "00001-43.png").pixels;
  ASSERT_EQ(alone.size(), in_batch.size());
  int worst = 0;
  for (size_t i = 0; i < alone.size(); ++i)
    worst = std::max(worst, std::abs(int(alone[i]) - int(in_batch[i])));
  EXPECT_LE(worst, 1);
}

TEST_F(CliTest, SamplePromptsFileSetsPerPromptSettings) {
  const auto prompts = dir_ / "prompts.toml";
  std::ofstream(prompts)
      << "[[prompt]]\ntext = \"a cat\"\nseed = 7\n\n[[prompt]]\ntext = \"a dog\"\nwidth = 32\n"
         "sampler = \"heun\"\n";
  auto r = run_kiln("sample " + tiny_sample_args() + " --seed 1 --prompts " + prompts.string() + " --out " +
                    (dir_ / "out").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(kiln::read_png(dir_ / "out" / "00000-7.png").width, 64);
  EXPECT_EQ(kiln::read_png(dir_ / "out" / "00001-1.png").width, 32);
  const auto fields =
      kiln::parse_a1111_parameters(kiln::read_png_text(dir_ / "out" / "00001-1.png")[0].second);
  EXPECT_EQ(fields.at("Sampler"), "Heun");
  EXPECT_EQ(fields.at("Prompt"), "a dog");
}

TEST_F(CliTest, SampleRefusesBadInputWithOneClearError) {
  const auto out = (dir_ / "out").string();
  auto r = run_kiln("sample " + tiny_sample_args("-W 100 -H 64") + " --prompt x --out " + out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("width 100 is not a positive multiple of 8"), std::string::npos) << r.output;
  r = run_kiln("sample " + tiny_sample_args() + " --sampler plms --prompt x --out " + out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("unknown sampler 'plms' (ddim, euler, euler_a, heun"), std::string::npos)
      << r.output;
  const auto missing = dir_ / "nope.safetensors";
  r = run_kiln("sample --model " + missing.string() + " --prompt x --out " + out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(missing.string() + ": no such model file or folder"), std::string::npos)
      << r.output;
  const auto empty = dir_ / "empty.safetensors";
  std::ofstream{empty};
  r = run_kiln("sample --model " + empty.string() + " --prompt x --out " + out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(empty.string() + ": the model file is empty"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out) && !fs::is_empty(out));
}

// --device is read before any work: a device that does not exist, or CUDA where none is usable, stops
// the command with the reason and leaves no output behind.
TEST_F(CliTest, UnusableDeviceIsRefusedBeforeAnyWork) {
  std::vector<std::pair<std::string, std::string>> refused{{"tpu", "--device 'tpu': expected cpu, cuda or cuda:N"}};
  if (!torch::cuda::is_available()) refused.push_back({"cuda", "--device cuda: no CUDA device is usable here"});
  for (const auto& [device, message] : refused) {
    SCOPED_TRACE(device);
    const auto out = dir_ / ("out-" + device);
    auto r = run_kiln("sample " + tiny_sample_args() + " --prompt x --device " + device + " --out " + out.string());
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
    r = run_kiln("demo --quick --device " + device + " --out " + out.string() + " --cache " + (dir_ / "cache").string());
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out));
  }
}

TEST_F(CliTest, GridAssemblesLabelledCellsReusesThemAndWritesAGif) {
  // Two "checkpoints": the tiny model and its diffusers-folder copy.
  const auto folder = dir_ / "tiny-diffusers";
  ASSERT_EQ(run_kiln("convert " + kTinyModel.string() + " " + folder.string() + " --layout diffusers " +
                     config_arg())
                .exit_code,
            0);
  const auto out = dir_ / "grid";
  const std::string args = "grid --models " + kTinyModel.string() + " " + folder.string() + " " +
                           config_arg() + " --seeds 5 -W 64 -H 64 --steps 2 --sampler ddim --gif --out " +
                           out.string() + " -p 'a red circle' 'a blue square' 'black and white circles'";
  auto r = run_kiln(args);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("6 cells generated, 0 reused"), std::string::npos) << r.output;
  const auto grid = kiln::read_png(out / "grid.png");
  // 3 columns x 2 rows of 64 px cells plus the label margins.
  EXPECT_GT(grid.width, 3 * 64);
  EXPECT_GT(grid.height, 2 * 64);
  EXPECT_EQ(std::distance(fs::directory_iterator(out / "cells"), fs::directory_iterator{}), 6);
  const auto frames = kiln::read_gif(out / "progress.gif");
  ASSERT_EQ(frames.size(), 2u);  // one frame per checkpoint
  EXPECT_GT(frames[0].width, 3 * 64);

  // A fourth prompt column reuses the six cells and samples only the two new ones.
  r = run_kiln(args + " 'a green triangle'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("2 cells generated, 6 reused"), std::string::npos) << r.output;

  // A LoRA on every checkpoint changes every cell: none is reused.
  r = run_kiln(args + " 'a green triangle' --lora " + (kGolden / "lora.safetensors").string() + ":0.8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("8 cells generated, 0 reused"), std::string::npos) << r.output;

  r = run_kiln("grid --models " + kTinyModel.string() + " " + config_arg() +
               " -p a --seeds 1 2 --cfgs 3 5 --out " + out.string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("neither --rows nor --cols"), std::string::npos) << r.output;
}

TEST_F(CliTest, TrainThenResumeWithNewSettings) {
  kiln::write_synthetic_dataset(dir_ / "data", 8, 64, 1);
  const auto run_file = dir_ / "run.toml";
  std::ofstream(run_file)
      << "[model]\ncheckpoint = \"" << kTinyModel.string() << "\"\nconfig = \"" << kTinyConfig.string()
      << "\"\n[data]\nfolders = [\"data\"]\nresolution = 64\nmin_bucket = 32\nmax_bucket = 128\n"
         "bucket_step = 32\nbatch_size = 4\n[training]\nepochs = 2\n[checkpoints]\ndtype = \"fp32\"\n";
  const auto run_dir = dir_ / "run";
  auto r =
      run_kiln("train " + run_file.string() + " --out " + run_dir.string() + " --set text_encoder.lr=1e-4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("lr = 0.0001"), std::string::npos) << r.output;  // the resolved settings, printed
  EXPECT_NE(r.output.find("4/4 steps"), std::string::npos) << r.output;    // 2 batches x 2 epochs
  ASSERT_TRUE(fs::exists(run_dir / "checkpoints" / "e0002.safetensors")) << r.output;

  // The same folder again is refused; resuming it with more epochs and a frozen text encoder works.
  r = run_kiln("train " + run_file.string() + " --out " + run_dir.string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("already holds a run"), std::string::npos) << r.output;
  r = run_kiln("train --resume " + run_dir.string() +
               " --set training.epochs=3 --set text_encoder.train=false");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto before = kiln::read_checkpoint(run_dir / "checkpoints" / "e0002.safetensors", kTinyConfig);
  const auto after = kiln::read_checkpoint(run_dir / "checkpoints" / "e0003.safetensors", kTinyConfig);
  for (const auto& [name, tensor] : before.text_encoder)
    EXPECT_TRUE(torch::equal(after.text_encoder.at(name), tensor)) << name;
  EXPECT_FALSE(torch::equal(after.unet.at("conv_in.weight"), before.unet.at("conv_in.weight")));

  // The run's diagnosis and report, through the CLI: verdicts printed, files written.
  r = run_kiln("diagnose " + run_dir.string() + " --seeds 1 2 --steps 2 -W 64 -H 64 --no-swap");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("e0002: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("e0003: "), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(run_dir / "diagnose" / "diagnose.json"));
  r = run_kiln("report " + run_dir.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto html = kiln::test::read_bytes(run_dir / "report.html");
  EXPECT_NE(html.find("e0003"), std::string::npos);
  EXPECT_NE(html.find("e0002: "), std::string::npos);  // the diagnosis (its verdicts) is on the page

  r = run_kiln("train " + run_file.string() + " --out " + (dir_ / "other").string() +
               " --set unet.learningrate=1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("unet.learningrate is not a setting of [unet]"), std::string::npos) << r.output;

  // An absurd rate (weights ~1e30 after the first update) makes the second step's loss non-finite:
  // the run stops there, naming the step, and the finished run's checkpoints are untouched.
  const auto before_bytes = kiln::test::read_bytes(run_dir / "checkpoints" / "e0003.safetensors");
  const auto nan_run = dir_ / "nan";
  r = run_kiln("train " + run_file.string() + " --out " + nan_run.string() +
               " --init-from " + (run_dir / "checkpoints" / "e0003.safetensors").string() +
               " --set unet.lr=1e30 --set unet.max_grad_norm=0 --set text_encoder.train=false");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("training stopped: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("at step 2 (epoch 1, batch 2)"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(nan_run / "checkpoints" / "e0001.safetensors"));
  EXPECT_EQ(kiln::test::read_bytes(run_dir / "checkpoints" / "e0003.safetensors"), before_bytes);
  // Skipping instead: every later step is dropped with a message and the run ends.
  r = run_kiln("train " + run_file.string() + " --out " + (dir_ / "skip").string() +
               " --set unet.lr=1e30 --set unet.max_grad_norm=0 --set text_encoder.train=false"
               " --set training.on_nan=skip");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("skipped: grad_norm/unet is "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("nan at step 2 (epoch 1, batch 2)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("nan at step 2 (epoch 2, batch 2)"), std::string::npos) << r.output;
  // The epoch losses average the steps that were applied; a skipped step does not poison them.
  std::istringstream metrics(kiln::test::read_bytes(dir_ / "skip" / "metrics.jsonl"));
  int epoch_losses = 0;
  for (std::string line; std::getline(metrics, line);) {
    if (line.find("\"loss/epoch\"") == std::string::npos) continue;
    ++epoch_losses;
    EXPECT_EQ(line.find("null"), std::string::npos) << line;
    EXPECT_EQ(line.find("nan"), std::string::npos) << line;
  }
  EXPECT_GT(epoch_losses, 0);
}

}  // namespace
