// UNet golden test: kiln's UNet2DConditionModel against diffusers 0.30.3 on the tiny model, output
// and every block's activation, plus the exact parameter names and shapes of the checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <iostream>

#include "golden_compare.h"
#include "models/unet.h"

namespace kiln {
namespace {

using test::all_close;

// The one place the tests get UNet weights from: the golden LDM single file through kiln's converter.
UNet2DConditionModel load_tiny_unet() { return test::load_tiny_models().unet; }

void report(const std::string& name, const torch::Tensor& actual, const torch::Tensor& expected) {
  std::cout << "[ reached ] unet " << name << ": max abs " << test::max_abs_error(actual, expected)
            << ", max rel " << test::max_relative_error(actual, expected) << " (|ref| max "
            << expected.abs().max().item<double>() << ")\n";
}

TEST(UNet, MatchesDiffusersOutputAndIntermediates) {
  torch::NoGradGuard no_grad;
  auto unet = load_tiny_unet();
  const auto golden = test::golden_file("unet.safetensors");
  Activations activations;
  auto out = unet->forward(golden.tensor("sample"), golden.tensor("timestep"),
                           golden.tensor("encoder_hidden_states"), &activations);
  const auto expected = golden.tensor("out");
  EXPECT_TRUE(all_close(out, expected, test::kSingleForward, "out"));
  report("out", out, expected);
  int compared = 0;
  const std::string prefix = "intermediate.";
  for (const auto& entry : golden.entries()) {
    if (entry.name.rfind(prefix, 0) != 0) continue;
    const auto name = entry.name.substr(prefix.size());
    ASSERT_TRUE(activations.count(name)) << "no activation recorded for " << name;
    const auto reference = golden.tensor(entry.name);
    EXPECT_TRUE(all_close(activations.at(name), reference, test::kSingleForward, name));
    report(name, activations.at(name), reference);
    ++compared;
  }
  EXPECT_EQ(compared, 12);
  EXPECT_EQ(activations.size(), 12u);
}

TEST(UNet, ScalarAndFloatTimestepsBroadcast) {
  torch::NoGradGuard no_grad;
  auto unet = load_tiny_unet();
  const auto golden = test::golden_file("unet.safetensors");
  auto sample = golden.tensor("sample"), context = golden.tensor("encoder_hidden_states");
  // The second batch row alone, timestep given as a 0-dim float: the same numbers as row 1 of the batch.
  auto single = unet->forward(sample.slice(0, 1, 2), torch::tensor(999.0), context.slice(0, 1, 2));
  EXPECT_TRUE(all_close(single, golden.tensor("out").slice(0, 1, 2), test::kSingleForward, "out[1] alone"));
  // A 0-dim timestep is shared by the whole batch.
  auto both = unet->forward(sample, torch::tensor(999, torch::kLong), context);
  EXPECT_TRUE(all_close(both.slice(0, 1, 2), golden.tensor("out").slice(0, 1, 2), test::kSingleForward,
                        "out[1] with a scalar timestep"));
}

TEST(UNet, TimestepEmbeddingKeepsFractionalTimesteps) {
  // k-diffusion samplers feed interpolated t; the features must not be rounded to whole steps.
  const auto t = torch::tensor({10.25, 999.5}, torch::kDouble);
  const auto emb = timestep_embedding(t, 32, /*flip_sin_to_cos=*/true, /*freq_shift=*/0);
  ASSERT_EQ(emb.sizes(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(emb.scalar_type(), torch::kFloat32);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t j = 0; j < 16; ++j) {
      const double a = t[b].item<double>() * std::exp(-std::log(10000.0) * static_cast<double>(j) / 16.0);
      // fp32 arguments reach ~1000: one ulp of the angle is ~6e-5.
      EXPECT_NEAR(emb[b][j].item<double>(), std::cos(a), 2e-4) << b << "," << j;
      EXPECT_NEAR(emb[b][16 + j].item<double>(), std::sin(a), 2e-4) << b << "," << j;
    }
  }
}

TEST(UNet, OddLatentSizesRunAndKeepTheirShape) {
  torch::NoGradGuard no_grad;
  UNet2DConditionModel unet(tiny_configs().unet);
  auto out = unet->forward(torch::randn({1, 4, 12, 20}), torch::tensor({500}), torch::randn({1, 77, 32}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 4, 12, 20}));
  Activations activations;
  auto odd = unet->forward(torch::randn({1, 4, 9, 9}), torch::tensor({500}), torch::randn({1, 77, 32}),
                           &activations);
  EXPECT_EQ(odd.sizes(), (std::vector<int64_t>{1, 4, 9, 9}));
  // 9 -> 5 -> 3 -> 2 on the way down; each upsampler restores the size of the skip it meets next.
  EXPECT_EQ(activations.at("down_blocks.2").sizes(), (std::vector<int64_t>{1, 64, 2, 2}));
  EXPECT_EQ(activations.at("up_blocks.0").sizes(), (std::vector<int64_t>{1, 64, 3, 3}));
  EXPECT_EQ(activations.at("up_blocks.1").sizes(), (std::vector<int64_t>{1, 64, 5, 5}));
  EXPECT_EQ(activations.at("up_blocks.2").sizes(), (std::vector<int64_t>{1, 64, 9, 9}));
}

TEST(UNet, OddSizeUpsamplingIsNearestToTheSkipSize) {
  torch::NoGradGuard no_grad;
  Upsample2D up(32);
  auto x = torch::randn({1, 32, 3, 2});
  // diffusers: F.interpolate(x, size=skip size, mode="nearest") then the 3x3 conv.
  auto expected =
      up->conv(torch::nn::functional::interpolate(x, torch::nn::functional::InterpolateFuncOptions()
                                                         .size(std::vector<int64_t>{5, 3})
                                                         .mode(torch::kNearest)));
  EXPECT_TRUE(torch::equal(up->forward(x, std::vector<int64_t>{5, 3}), expected));
  auto doubled = up->forward(x, c10::nullopt);
  EXPECT_EQ(doubled.sizes(), (std::vector<int64_t>{1, 32, 6, 4}));
}

// Parameter names and shapes, against the diffusers names the reference generator listed in
// keymap.json (independent of kiln's LDM converter).
TEST(UNet, ParameterNamesAndShapesAreTheDiffusersKeys) {
  UNet2DConditionModel unet(tiny_configs().unet);
  std::map<std::string, std::vector<int64_t>> params;
  for (const auto& p : unet->named_parameters()) params[p.key()] = p.value().sizes().vec();
  EXPECT_TRUE(unet->named_buffers().is_empty());

  std::ifstream in(test::golden_dir() / "tiny-sd" / "keymap.json");
  ASSERT_TRUE(in) << "keymap.json";
  const auto keymap = nlohmann::json::parse(in);
  std::map<std::string, std::vector<int64_t>> expected;
  for (const auto& t : keymap["tensors"])
    if (t["diffusers_file"] == "unet/diffusion_pytorch_model.safetensors")
      expected[t["diffusers_name"].get<std::string>()] = t["diffusers_shape"].get<std::vector<int64_t>>();
  ASSERT_EQ(expected.size(), 684u);
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(params.count(name)) << "missing " << name;
    EXPECT_EQ(params.at(name), shape) << name;
  }
  for (const auto& [name, shape] : params) EXPECT_TRUE(expected.count(name)) << "unexpected " << name;
  EXPECT_EQ(params.size(), 684u);
  EXPECT_FALSE(params.count("down_blocks.2.resnets.0.conv_shortcut.weight"));  // 64 -> 64: no shortcut
  int64_t total = 0;
  for (const auto& p : unet->parameters()) total += p.numel();
  EXPECT_EQ(total, 3222692);
}

TEST(UNet, ParameterNamesAndShapesAreTheConvertedCheckpointKeys) {
  UNet2DConditionModel unet(tiny_configs().unet);
  const auto checkpoint = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  const auto params = state_dict(*unet);
  ASSERT_EQ(checkpoint.unet.size(), params.size());
  for (const auto& [name, tensor] : checkpoint.unet) {
    ASSERT_TRUE(params.count(name)) << name;
    EXPECT_EQ(params.at(name).sizes(), tensor.sizes()) << name;
  }
}

TEST(UNet, HeadCountsComeFromTheConfigPerBlock) {
  auto config = tiny_configs().unet;
  config.num_attention_heads = {1, 2, 4, 8};
  UNet2DConditionModel unet(config);
  auto heads = [](torch::nn::ModuleList attentions) {
    auto* t = attentions[0]->as<Transformer2DModel>();
    return t->transformer_blocks[0]->as<BasicTransformerBlock>()->attn2->heads_;
  };
  EXPECT_EQ(heads(unet->down_blocks[0]->as<DownBlock>()->attentions), 1);
  EXPECT_EQ(heads(unet->down_blocks[2]->as<DownBlock>()->attentions), 4);
  EXPECT_EQ(heads(unet->mid_block->attentions), 8);
  // Up blocks run in reverse: up_blocks.1 mirrors down_blocks.2.
  EXPECT_EQ(heads(unet->up_blocks[1]->as<UpBlock>()->attentions), 4);
  EXPECT_EQ(heads(unet->up_blocks[3]->as<UpBlock>()->attentions), 1);
}

}  // namespace
}  // namespace kiln
