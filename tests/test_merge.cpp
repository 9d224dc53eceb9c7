// Checkpoint merging on the tiny model: A1111's weighted sum and add difference, SuperMerger block
// weights, component swaps, recipes, refusals, metadata, and the `kiln merge` command line.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "golden_compare.h"
#include "io/checkpoint.h"
#include "surgery/merge.h"
#include "surgery/merge_recipe.h"
#include "util/error.h"
#include "util/sha256.h"
#include "test_support.h"

namespace fs = std::filesystem;

namespace kiln {
namespace {

constexpr std::array<Component, 3> kParts = {Component::UNet, Component::TextEncoder, Component::VAE};
constexpr test::Tolerance kMergeTolerance{1e-6, 1e-6};

using test::run_kiln;

Checkpoint read_tiny(const fs::path& path) { return read_checkpoint(path, test::tiny_config_path()); }

// The tiny model with every floating tensor moved by seeded noise: a second "fine-tune" of it.
Checkpoint perturbed(const Checkpoint& base, uint64_t seed, double scale) {
  torch::manual_seed(seed);
  Checkpoint out = base;
  for (auto c : kParts)
    for (auto& [key, t] : out.component(c)) t = t + scale * torch::randn_like(t);
  return out;
}

// A, and B and C made by perturbing A, written once per test binary run.
class MergeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("kiln-merge-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const Checkpoint a = read_tiny(test::tiny_model_path());
    write_checkpoint(perturbed(a, 1, 0.05), b_path(), CheckpointLayout::Ldm);
    write_checkpoint(perturbed(a, 2, 0.05), c_path(), CheckpointLayout::Ldm);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static fs::path a_path() { return test::tiny_model_path(); }
  static fs::path b_path() { return dir_ / "b.safetensors"; }
  static fs::path c_path() { return dir_ / "c.safetensors"; }
  static std::string config_arg() { return "--config " + test::tiny_config_path().string(); }

  static fs::path dir_;
};

fs::path MergeTest::dir_;

void expect_component_equal(const Checkpoint& actual, const Checkpoint& expected, Component c) {
  const StateDict& got = actual.component(c);
  const StateDict& want = expected.component(c);
  ASSERT_EQ(got.size(), want.size()) << component_name(c);
  for (const auto& [key, t] : want) {
    ASSERT_TRUE(got.count(key)) << key;
    EXPECT_EQ(got.at(key).scalar_type(), t.scalar_type()) << key;
    EXPECT_TRUE(torch::equal(got.at(key), t)) << component_name(c) << " " << key;
  }
}

void expect_equal(const Checkpoint& actual, const Checkpoint& expected) {
  for (auto c : kParts) expect_component_equal(actual, expected, c);
}

// Every tensor of `actual` against f(tensor of A, tensor of B) computed here in float32.
template <typename F>
void expect_each(const Checkpoint& actual, const Checkpoint& a, const Checkpoint& b, F expected) {
  for (auto c : kParts)
    for (const auto& [key, t] : a.component(c))
      EXPECT_TRUE(test::all_close(actual.component(c).at(key), expected(c, key, t, b.component(c).at(key)),
                                  kMergeTolerance, key));
}

TEST(MergeBlocks, SuperMergerBlockFromKey) {
  EXPECT_EQ(merge_block_name(merge_block_index("model.diffusion_model.time_embed.0.weight")), "IN00");
  EXPECT_EQ(merge_block_name(merge_block_index("model.diffusion_model.input_blocks.0.0.weight")), "IN00");
  EXPECT_EQ(merge_block_name(merge_block_index("model.diffusion_model.input_blocks.4.1.proj_in.weight")),
            "IN04");
  EXPECT_EQ(merge_block_name(merge_block_index("model.diffusion_model.input_blocks.11.0.out_layers.3.bias")),
            "IN11");
  EXPECT_EQ(merge_block_name(merge_block_index("model.diffusion_model.middle_block.1.norm.weight")), "M00");
  EXPECT_EQ(merge_block_name(merge_block_index(
                "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn1.to_out.0.weight")),
            "OUT02");
  EXPECT_EQ(
      merge_block_name(merge_block_index("model.diffusion_model.output_blocks.11.0.skip_connection.bias")),
      "OUT11");
  EXPECT_EQ(merge_block_name(merge_block_index("model.diffusion_model.out.2.weight")), "OUT11");
  EXPECT_EQ(
      merge_block_name(merge_block_index("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn."
                                         "out_proj.weight")),
      "BASE");
  EXPECT_EQ(merge_block_name(merge_block_index("first_stage_model.decoder.mid.attn_1.proj_out.weight")),
            "BASE");
}

TEST_F(MergeTest, WeightedSumEndsAreTheInputsBitExactly) {
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  expect_equal(weighted_sum(a, b, 0.0), a);
  expect_equal(weighted_sum(a, b, 1.0), b);
}

TEST_F(MergeTest, WeightedSumIsTheFormula) {
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  const double alpha = 0.3;
  const Checkpoint merged = weighted_sum(a, b, alpha);
  expect_each(merged, a, b,
              [&](Component, const std::string&, const torch::Tensor& ta, const torch::Tensor& tb) {
                return (1 - alpha) * ta + alpha * tb;
              });
  EXPECT_TRUE(merged.extra.empty());
  EXPECT_TRUE(merged.metadata.empty());
}

TEST_F(MergeTest, AddDifferenceOfEqualModelsIsABitExactly) {
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  expect_equal(add_difference(a, b, b, 1.0), a);
}

TEST_F(MergeTest, AddDifferenceIsTheFormula) {
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path()), c = read_tiny(c_path());
  const double m = 0.7;
  const Checkpoint merged = add_difference(a, b, c, m);
  for (auto part : kParts)
    for (const auto& [key, ta] : a.component(part))
      EXPECT_TRUE(test::all_close(merged.component(part).at(key),
                                  ta + m * (b.component(part).at(key) - c.component(part).at(key)),
                                  kMergeTolerance, key));
}

TEST_F(MergeTest, SwapCopiesWholeComponents) {
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path()), c = read_tiny(c_path());
  MergeSpec spec;
  spec.text_encoder.from = 0;
  spec.unet.from = 1;
  spec.vae.from = 2;
  const std::array<const Checkpoint*, 3> inputs = {&a, &b, &c};
  const Checkpoint swapped = merge_checkpoints(inputs, spec);
  expect_component_equal(swapped, a, Component::TextEncoder);
  expect_component_equal(swapped, b, Component::UNet);
  expect_component_equal(swapped, c, Component::VAE);

  // A merge that takes one component whole: the UNet merges, the VAE is C's.
  MergeSpec mixed;
  mixed.alpha = 0.5;
  mixed.vae.from = 2;
  const Checkpoint merged = merge_checkpoints(inputs, mixed);
  expect_component_equal(merged, c, Component::VAE);
  const std::string key = "conv_in.weight";
  EXPECT_TRUE(test::all_close(merged.unet.at(key), 0.5 * a.unet.at(key) + 0.5 * b.unet.at(key),
                              kMergeTolerance, key));
}

TEST_F(MergeTest, BlockWeightsFollowSuperMergerBlocks) {
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  MergeSpec spec;
  UNetBlockWeights weights{};
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = 0.02 + 0.03 * static_cast<double>(i);
  spec.unet_blocks = weights;
  spec.base_alpha = 0.9;
  spec.alpha = 0.5;  // must not be used anywhere: blocks and BASE settle every key
  const std::array<const Checkpoint*, 2> inputs = {&a, &b};
  const Checkpoint merged = merge_checkpoints(inputs, spec);
  EXPECT_FALSE(spec.uses_alpha());

  auto expect_weight = [&](Component c, const std::string& key, double w) {
    const torch::Tensor expected = (1 - w) * a.component(c).at(key) + w * b.component(c).at(key);
    EXPECT_TRUE(test::all_close(merged.component(c).at(key), expected, kMergeTolerance, key))
        << "weight " << w;
  };
  expect_weight(Component::UNet, "conv_in.weight", weights[0]);                  // input_blocks.0.0: IN00
  expect_weight(Component::UNet, "time_embedding.linear_1.weight", weights[0]);  // time_embed: IN00
  expect_weight(Component::UNet, "down_blocks.1.resnets.0.conv1.weight", weights[4]);  // input_blocks.4: IN04
  expect_weight(Component::UNet, "conv_out.weight", weights[24]);                      // out.2: OUT11
  expect_weight(Component::UNet, "conv_norm_out.bias", weights[24]);                   // out.0: OUT11
  expect_weight(Component::UNet, "mid_block.resnets.0.conv1.weight", weights[12]);     // M00
  expect_weight(Component::UNet, "up_blocks.0.resnets.0.conv1.weight",
                weights[13]);                                                        // output_blocks.0: OUT00
  expect_weight(Component::TextEncoder, "text_model.final_layer_norm.weight", 0.9);  // BASE
  expect_weight(Component::VAE, "decoder.conv_out.weight", 0.9);                     // BASE

  // Every key, by the block of its LDM name: IN04 gets weights[4], and so on.
  size_t checked_in04 = 0;
  for (auto c : kParts)
    for (const auto& [key, t] : a.component(c)) {
      const size_t block = merge_block_index(diffusers_to_ldm(c, key));
      EXPECT_EQ(block == 0, c != Component::UNet) << key;  // BASE is the text encoder and VAE only
      const double w = block == 0 ? 0.9 : weights[block - 1];
      if (merge_block_name(block) == "IN04") ++checked_in04;
      EXPECT_TRUE(test::all_close(merged.component(c).at(key), (1 - w) * t + w * b.component(c).at(key),
                                  kMergeTolerance, key));
    }
  EXPECT_GT(checked_in04, 0u);
  // down_blocks.1.attentions.0 is input_blocks.4.1: IN04.
  EXPECT_EQ(merge_block_name(merge_block_index(
                diffusers_to_ldm(Component::UNet, "down_blocks.1.attentions.0.proj_in.weight"))),
            "IN04");
}

TEST_F(MergeTest, ComponentAlphasOverrideTheStepAlpha) {
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  MergeSpec spec;
  spec.alpha = 0.25;
  spec.text_encoder.alpha = 1.0;
  const std::array<const Checkpoint*, 2> inputs = {&a, &b};
  const Checkpoint merged = merge_checkpoints(inputs, spec);
  expect_component_equal(merged, b, Component::TextEncoder);
  const std::string key = "decoder.conv_in.weight";
  EXPECT_TRUE(
      test::all_close(merged.vae.at(key), 0.75 * a.vae.at(key) + 0.25 * b.vae.at(key), kMergeTolerance, key));
}

TEST_F(MergeTest, MismatchedShapeOrMissingKeyIsRefusedNamingKeyAndFiles) {
  const Checkpoint a = read_tiny(a_path());
  Checkpoint d = read_tiny(b_path());
  d.source = "other-model.safetensors";
  const std::string key = "down_blocks.1.attentions.0.proj_in.weight";
  d.unet[key] = torch::zeros({3, 5});
  try {
    weighted_sum(a, d, 0.5);
    FAIL() << "a shape mismatch was accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(key), std::string::npos) << message;
    EXPECT_NE(message.find("model.diffusion_model.input_blocks.4.1.proj_in.weight"), std::string::npos)
        << message;
    EXPECT_NE(message.find(a.source.string()), std::string::npos) << message;
    EXPECT_NE(message.find("other-model.safetensors"), std::string::npos) << message;
  }

  d.unet.erase(key);
  try {
    weighted_sum(a, d, 0.5);
    FAIL() << "a missing key was accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(key), std::string::npos) << message;
    EXPECT_NE(message.find("other-model.safetensors has no"), std::string::npos) << message;
  }

  // C is checked as well as B in add difference.
  const Checkpoint b = read_tiny(b_path());
  EXPECT_THROW(add_difference(a, b, d, 1.0), Error);
}

TEST_F(MergeTest, OutputDtypeAndDroppedExtras) {
  Checkpoint a = read_tiny(a_path());
  a.extra["betas"] = torch::linspace(0.1, 0.2, 10);  // A's own schedule: not the merged model's
  const Checkpoint b = read_tiny(b_path());
  const Checkpoint half = weighted_sum(a, b, 0.3, torch::kFloat16);
  EXPECT_TRUE(half.extra.empty());
  for (auto c : kParts)
    for (const auto& [key, t] : half.component(c)) EXPECT_EQ(t.scalar_type(), torch::kFloat16) << key;
  const Checkpoint full = weighted_sum(a, b, 0.3);
  const std::string key = "conv_in.weight";
  EXPECT_TRUE(torch::equal(half.unet.at(key), full.unet.at(key).to(torch::kFloat16)));
}

TEST_F(MergeTest, LdmFileMergesWithDiffusersFolder) {
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  const fs::path folder = dir_ / "b-diffusers";
  write_checkpoint(b, folder, CheckpointLayout::Diffusers);
  const Checkpoint b_folder = read_checkpoint(folder);
  ASSERT_EQ(b_folder.layout, CheckpointLayout::Diffusers);
  expect_equal(weighted_sum(a, b_folder, 0.3), weighted_sum(a, b, 0.3));
  expect_equal(weighted_sum(b_folder, a, 0.6), weighted_sum(b, a, 0.6));
  fs::remove_all(folder);
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

TEST_F(MergeTest, RecipeChainEqualsTheStepsByHand) {
  const fs::path recipe_path = dir_ / "recipe.toml";
  const std::string text =
      "[inputs]\n"
      "base = \"" +
      a_path().string() +
      "\"\n"
      "tuned = \"b.safetensors\"\n"  // relative to the recipe
      "other = { path = \"c.safetensors\" }\n"
      "[[step]]\n"
      "name = \"mix\"\n"
      "weighted_sum = { a = \"base\", b = \"tuned\", alpha = 0.4 }\n"
      "[[step]]\n"
      "name = \"out\"\n"
      "add_difference = { a = \"mix\", b = \"other\", c = \"base\", multiplier = 0.5 }\n"
      "vae_from = \"tuned\"\n";
  write_text(recipe_path, text);
  const MergeRecipe recipe = read_merge_recipe(recipe_path);
  ASSERT_EQ(recipe.steps.size(), 2u);
  ASSERT_EQ(recipe.inputs.size(), 3u);
  EXPECT_EQ(recipe.inputs[1].name, "tuned");  // in the order written
  EXPECT_EQ(recipe.inputs[1].path, dir_ / "b.safetensors");
  MergeRunOptions options;
  options.config = test::tiny_config_path();
  const Checkpoint result = run_merge_recipe(recipe, options);

  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path()), c = read_tiny(c_path());
  const Checkpoint mix = weighted_sum(a, b, 0.4);
  const Checkpoint out = add_difference(mix, c, a, 0.5);
  for (auto part : {Component::UNet, Component::TextEncoder})
    for (const auto& [key, t] : out.component(part))
      EXPECT_TRUE(test::all_close(result.component(part).at(key), t, kMergeTolerance, key));
  expect_component_equal(result, b, Component::VAE);

  // The metadata records the recipe as written and each input's A1111 short hash.
  EXPECT_EQ(result.metadata.at("kiln.merge_recipe"), text);
  const auto inputs = nlohmann::json::parse(result.metadata.at("kiln.merge_inputs"));
  EXPECT_EQ(inputs["base"]["sha256"], sha256_file(a_path()).substr(0, 10));
  EXPECT_EQ(inputs["tuned"]["sha256"], sha256_file(b_path()).substr(0, 10));
  EXPECT_EQ(inputs["other"]["path"], (dir_ / "c.safetensors").string());
  const auto models = nlohmann::json::parse(result.metadata.at("sd_merge_models"));
  EXPECT_TRUE(models.contains(sha256_file(c_path())));
  EXPECT_EQ(models[sha256_file(a_path())]["name"], "model.safetensors");
  EXPECT_FALSE(result.metadata.count("sd_merge_recipe"));  // two steps: A1111's record cannot describe it
}

TEST_F(MergeTest, SwapStepInARecipe) {
  const std::string text =
      "[inputs]\n"
      "a = \"" +
      a_path().string() +
      "\"\n"
      "b = \"" +
      b_path().string() +
      "\"\n"
      "[[step]]\n"
      "name = \"out\"\n"
      "swap = { text_encoder = \"a\", unet = \"b\", vae = \"a\" }\n";
  MergeRunOptions options;
  options.config = test::tiny_config_path();
  const Checkpoint result = run_merge_recipe(parse_merge_recipe(text, dir_ / "swap.toml"), options);
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  expect_component_equal(result, b, Component::UNet);
  expect_component_equal(result, a, Component::TextEncoder);
  expect_component_equal(result, a, Component::VAE);
}

TEST_F(MergeTest, BadRecipesAreRefusedNamingTheFile) {
  const fs::path source = dir_ / "bad-recipe.toml";
  const std::string inputs = "[inputs]\nx = \"x.safetensors\"\ny = \"y.safetensors\"\n";
  auto expect_refused = [&](const std::string& text, const std::string& part) {
    try {
      parse_merge_recipe(text, source);
      ADD_FAILURE() << "accepted:\n" << text;
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(source.string()), std::string::npos) << message;
      EXPECT_NE(message.find(part), std::string::npos) << message;
    }
  };
  const std::string mix = "[[step]]\nname = \"mix\"\nweighted_sum = { a = \"x\", b = \"y\", alpha = 0.5 }\n";
  expect_refused(inputs + mix + "colour = 3\n", "unknown key 'colour'");
  expect_refused(
      inputs + "[[step]]\nname = \"m\"\nweighted_sum = { a = \"x\", b = \"y\", alpha = 0.5, beta = 1 }\n",
      "unknown key 'beta'");
  expect_refused("output = \"o\"\n" + inputs + mix, "unknown key 'output'");
  expect_refused(inputs + "[[step]]\nname = \"m\"\nweighted_sum = { a = \"x\", b = \"z\", alpha = 0.5 }\n",
                 "unknown name 'z'");
  expect_refused(inputs +
                     "[[step]]\nname = \"m\"\nweighted_sum = { a = \"x\", b = \"later\", alpha = 0.5 }\n" +
                     "[[step]]\nname = \"later\"\nweighted_sum = { a = \"m\", b = \"y\", alpha = 0.5 }\n",
                 "comes later");
  expect_refused(inputs + "[[step]]\nname = \"m\"\nweighted_sum = { a = \"x\", b = \"m\", alpha = 0.5 }\n",
                 "uses itself");
  expect_refused(inputs + "[[step]]\nname = \"m\"\nweighted_sum = { a = \"x\", b = \"y\" }\n",
                 "needs 'alpha'");
  expect_refused(inputs +
                     "[[step]]\nname = \"m\"\nweighted_sum = { a = \"x\", b = \"y\", alpha = 0.5 }\n"
                     "unet_blocks = [1, 2]\n",
                 "unet_blocks");
  expect_refused(inputs + "[[step]]\nname = \"m\"\nswap = { unet = \"x\", text_encoder = \"y\" }\n",
                 "needs 'vae'");
  expect_refused("[inputs]\nx = \"x.safetensors\"\ny = \"y.safetensors\"\nz = \"z.safetensors\"\n" + mix,
                 "input 'z' is not used");
  expect_refused(
      inputs + mix + "[[step]]\nname = \"x\"\nweighted_sum = { a = \"mix\", b = \"y\", alpha = 0.5 }\n",
      "already used");
  expect_refused(inputs + "[step]\nname = \"m\"\n", "[[step]]");
  expect_refused(inputs + mix + "[[step\n", "not valid TOML");
}

TEST_F(MergeTest, CliWeightedSumWritesTheMergeAndItsRecord) {
  const fs::path out = dir_ / "cli-merge.safetensors";
  const auto r = run_kiln("merge " + a_path().string() + " " + b_path().string() + " --alpha 0.3 --out " +
                          out.string() + " " + config_arg());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("weighted sum of A and B, alpha 0.3"), std::string::npos) << r.output;
  const Checkpoint merged = read_tiny(out);
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  expect_equal(merged, weighted_sum(a, b, 0.3));
  const auto recipe = nlohmann::json::parse(merged.metadata.at("sd_merge_recipe"));
  EXPECT_EQ(recipe["interp_method"], "Weighted sum");
  EXPECT_EQ(recipe["multiplier"], 0.3);
  EXPECT_EQ(recipe["primary_model_hash"], sha256_file(a_path()));
  EXPECT_EQ(recipe["secondary_model_hash"], sha256_file(b_path()));
  // The recorded recipe is itself a recipe file that runs again.
  const MergeRecipe again = parse_merge_recipe(merged.metadata.at("kiln.merge_recipe"), dir_ / "again.toml");
  ASSERT_EQ(again.steps.size(), 1u);
  EXPECT_EQ(again.steps[0].spec.alpha, 0.3);
  fs::remove(out);
}

TEST_F(MergeTest, CliAddDifferenceSwapsAndErrors) {
  const fs::path out = dir_ / "cli-diff";
  const std::string abc = a_path().string() + " " + b_path().string() + " " + c_path().string();
  auto r =
      run_kiln("merge " + abc + " --add-difference --multiplier 0.5 --vae-from C --layout diffusers --out " +
               out.string() + " " + config_arg());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Checkpoint merged = read_checkpoint(out);
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path()), c = read_tiny(c_path());
  const Checkpoint expected = add_difference(a, b, c, 0.5);
  expect_component_equal(merged, expected, Component::UNet);
  expect_component_equal(merged, c, Component::VAE);
  fs::remove_all(out);

  const fs::path swap = dir_ / "cli-swap.safetensors";
  r = run_kiln("merge " + a_path().string() + " " + b_path().string() +
               " --text-encoder-from A --unet-from B --vae-from A --out " + swap.string() + " " +
               config_arg());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Checkpoint swapped = read_tiny(swap);
  expect_component_equal(swapped, b, Component::UNet);
  expect_component_equal(swapped, a, Component::TextEncoder);
  fs::remove(swap);

  r = run_kiln("merge " + a_path().string() + " " + b_path().string() + " --out " + swap.string() + " " +
               config_arg());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("needs --alpha"), std::string::npos) << r.output;
  r = run_kiln("merge " + a_path().string() + " " + b_path().string() +
               " --unet-blocks 1,2,3 --alpha 0.5 --out " + swap.string() + " " + config_arg());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("25"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(swap));
}

TEST_F(MergeTest, CliBlockWeightsAndRecipe) {
  std::string blocks;
  UNetBlockWeights weights{};
  for (size_t i = 0; i < weights.size(); ++i) {
    weights[i] = static_cast<double>(i) / 24.0;
    if (i > 0) blocks += ',';
    blocks += std::to_string(weights[i]);
  }
  const fs::path out = dir_ / "cli-blocks.safetensors";
  auto r = run_kiln("merge " + a_path().string() + " " + b_path().string() + " --unet-blocks \"" + blocks +
                    "\" --base-alpha 0.25 --out " + out.string() + " " + config_arg());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Checkpoint a = read_tiny(a_path()), b = read_tiny(b_path());
  MergeSpec spec;
  spec.unet_blocks = weights;
  for (auto& w : *spec.unet_blocks) w = std::stod(std::to_string(w));  // as the command line read them
  spec.base_alpha = 0.25;
  const std::array<const Checkpoint*, 2> inputs = {&a, &b};
  expect_equal(read_tiny(out), merge_checkpoints(inputs, spec));
  fs::remove(out);

  const fs::path recipe = dir_ / "cli-recipe.toml";
  write_text(recipe, "[inputs]\na = \"" + a_path().string() +
                         "\"\nb = \"b.safetensors\"\n"
                         "[[step]]\nname = \"half\"\nweighted_sum = { a = \"a\", b = \"b\", alpha = 0.5 }\n");
  r = run_kiln("merge --recipe " + recipe.string() + " --dtype fp16 --out " + out.string() + " " +
               config_arg());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Checkpoint half = read_tiny(out);
  EXPECT_EQ(half.unet.at("conv_in.weight").scalar_type(), torch::kFloat16);
  EXPECT_TRUE(torch::equal(half.unet.at("conv_in.weight"),
                           weighted_sum(a, b, 0.5).unet.at("conv_in.weight").to(torch::kFloat16)));
  EXPECT_EQ(nlohmann::json::parse(half.metadata.at("sd_merge_recipe"))["save_as_half"], true);
  fs::remove(out);
}

}  // namespace
}  // namespace kiln
