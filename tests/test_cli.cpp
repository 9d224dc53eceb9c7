// End-to-end tests of the `kiln` command line on the tiny reference model: exit codes, messages,
// JSON output and files written, exactly as a user's script would see them.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "io/safetensors.h"
#include "util/sha256.h"

namespace fs = std::filesystem;

namespace {

struct RunResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

RunResult run_kiln(const std::string& args) {
  const std::string command = std::string(KILN_CLI_PATH) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string output;
  std::array<char, 4096> buffer{};
  size_t n = 0;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

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

}  // namespace
