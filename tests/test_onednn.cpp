// The oneDNN linear path against libtorch's own Linear: same numbers within fp32 rounding for every
// input shape the models pass, and libtorch's path whenever a graph, autocast or another dtype is in play.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "golden_compare.h"
#include "models/autocast.h"
#include "models/onednn.h"

namespace kiln {
namespace {

constexpr test::Tolerance kRounding{1e-5, 1e-5};

TEST(OneDnnLinear, EqualsTorchLinearWithAndWithoutBias) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN (libtorch >= 2 or no libdnnl-dev)";
  torch::NoGradGuard no_grad;
  torch::manual_seed(11);
  for (const bool bias : {true, false}) {
    torch::nn::Linear layer(torch::nn::LinearOptions(48, 80).bias(bias));
    for (const auto& x : {torch::randn({5, 48}), torch::randn({2, 37, 48}), torch::randn({2, 48, 37}).transpose(1, 2)}) {
      ASSERT_TRUE(onednn_applies({&x, &layer->weight}));  // the oneDNN path, not the fallback, is compared
      const auto expected = layer->forward(x);
      const auto out = apply_linear(*layer, x, /*min_flops=*/0);
      EXPECT_EQ(out.sizes(), expected.sizes());
      EXPECT_TRUE(test::all_close(out, expected, kRounding, bias ? "with bias" : "without bias"));
    }
  }
}

TEST(OneDnnLinear, LeavesGraphsAndAutocastToTorch) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  torch::manual_seed(12);
  torch::nn::Linear layer(16, 8);
  auto x = torch::randn({4, 16});
  // Training: the weight needs a gradient, which only libtorch's path records.
  apply_linear(*layer, x, 0).sum().backward();
  ASSERT_TRUE(layer->weight.grad().defined());
  EXPECT_TRUE(test::all_close(layer->weight.grad(), x.sum(0).expand({8, 16}), kRounding, "weight grad"));
  // bf16 autocast: the result is libtorch's bf16 linear, not an fp32 one.
  torch::NoGradGuard no_grad;
  const AutocastGuard autocast(torch::kCPU, MixedPrecision::BF16);
  EXPECT_EQ(apply_linear(*layer, x, 0).scalar_type(), torch::kBFloat16);
}

}  // namespace
}  // namespace kiln
