// UNet golden test: kiln's UNet2DConditionModel against diffusers 0.30.3 on the tiny model, output
// and every block's activation, plus the exact parameter names and shapes of the checkpoint.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>

#include "golden_compare.h"
#include "models/unet.h"

namespace kiln {
namespace {

using test::all_close;

TEST(UNet, MatchesDiffusersOutputAndIntermediates) {
  torch::NoGradGuard no_grad;
  auto models = test::load_tiny_models();
  const auto golden = test::golden_file("unet.safetensors");
  Activations activations;
  auto out = models.unet->forward(golden.tensor("sample"), golden.tensor("timestep"),
                                  golden.tensor("encoder_hidden_states"), &activations);
  const auto expected = golden.tensor("out");
  EXPECT_TRUE(all_close(out, expected, test::kSingleForward, "out"));
  std::cout << "[ reached ] unet out: max abs " << test::max_abs_error(out, expected) << " (|ref| max "
            << expected.abs().max().item<double>() << ")\n";
  int compared = 0;
  for (const auto& entry : golden.entries()) {
    const std::string prefix = "intermediate.";
    if (entry.name.rfind(prefix, 0) != 0) continue;
    const auto name = entry.name.substr(prefix.size());
    ASSERT_TRUE(activations.count(name)) << "no activation recorded for " << name;
    EXPECT_TRUE(all_close(activations.at(name), golden.tensor(entry.name), test::kSingleForward, name));
    ++compared;
  }
  EXPECT_EQ(compared, 12);
}

TEST(UNet, ScalarAndFloatTimestepsBroadcast) {
  torch::NoGradGuard no_grad;
  auto models = test::load_tiny_models();
  const auto golden = test::golden_file("unet.safetensors");
  auto sample = golden.tensor("sample"), context = golden.tensor("encoder_hidden_states");
  // The second batch row alone, timestep given as a 0-dim float: the same numbers as row 1 of the batch.
  auto single = models.unet->forward(sample.slice(0, 1, 2), torch::tensor(999.0), context.slice(0, 1, 2));
  EXPECT_TRUE(all_close(single, golden.tensor("out").slice(0, 1, 2), test::kSingleForward, "out[1] alone"));
}

TEST(UNet, OddLatentSizesRunAndKeepTheirShape) {
  torch::NoGradGuard no_grad;
  UNet2DConditionModel unet(tiny_configs().unet);
  auto out = unet->forward(torch::randn({1, 4, 12, 20}), torch::tensor({500}), torch::randn({1, 77, 32}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 4, 12, 20}));
  auto odd = unet->forward(torch::randn({1, 4, 9, 9}), torch::tensor({500}), torch::randn({1, 77, 32}));
  EXPECT_EQ(odd.sizes(), (std::vector<int64_t>{1, 4, 9, 9}));
}

TEST(UNet, ParameterNamesAndShapesAreTheCheckpointKeys) {
  UNet2DConditionModel unet(tiny_configs().unet);
  const auto checkpoint = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  const auto params = state_dict(*unet);
  ASSERT_EQ(params.size(), 684u);
  ASSERT_EQ(checkpoint.unet.size(), params.size());
  for (const auto& [name, tensor] : checkpoint.unet) {
    ASSERT_TRUE(params.count(name)) << name;
    EXPECT_EQ(params.at(name).sizes(), tensor.sizes()) << name;
  }
  EXPECT_FALSE(params.count("down_blocks.2.resnets.0.conv_shortcut.weight"));  // 64 -> 64: no shortcut
}

}  // namespace
}  // namespace kiln
