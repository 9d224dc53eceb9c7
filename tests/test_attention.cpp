// The memory-saving attention paths against the plain one: slicing the queries changes which
// scores exist at once, never the result beyond fp32 rounding.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "golden_compare.h"
#include "models/attention.h"
#include "models/onednn.h"
#include "util/error.h"

namespace kiln {
namespace {

constexpr test::Tolerance kRounding{1e-6, 1e-5};

struct Case {
  int64_t batch, q_len, k_len, heads, head_dim;
};
// Self-attention, cross-attention to 77 text tokens, and one wide head (the VAE's).
const std::vector<Case> kCases{{2, 300, 300, 8, 8}, {2, 257, 77, 8, 40}, {1, 1024, 1024, 1, 64}};

struct Inputs {
  torch::Tensor q, k, v;
};
Inputs random_inputs(const Case& c) {
  return {torch::randn({c.batch, c.q_len, c.heads * c.head_dim}), torch::randn({c.batch, c.k_len, c.heads * c.head_dim}),
          torch::randn({c.batch, c.k_len, c.heads * c.head_dim})};
}

TEST(Attention, ChunkedEqualsPlainForSelfAndCrossAttention) {
  torch::manual_seed(7);
  for (const auto& c : kCases) {
    const auto [q, k, v] = random_inputs(c);
    const auto plain = multi_head_attention(q, k, v, c.heads, std::nullopt, {AttentionKernel::Plain});
    // A slice budget of ~5 rows forces dozens of slices, including a short last one.
    AttentionOptions chunked{AttentionKernel::Chunked, 5 * c.batch * c.heads * c.k_len * 4 + 3};
    const auto out = multi_head_attention(q, k, v, c.heads, std::nullopt, chunked);
    EXPECT_TRUE(test::all_close(out, plain, kRounding, "chunked " + std::to_string(c.q_len)));
    if (fused_attention_available()) {
      const auto fused = multi_head_attention(q, k, v, c.heads, std::nullopt, {AttentionKernel::Fused});
      EXPECT_TRUE(test::all_close(fused, plain, kRounding, "fused " + std::to_string(c.q_len)));
    }
  }
}

// oneDNN's primitives read and write the [B, L, H*D] tensors through strides: every head, batch
// entry and slice (a short last one included) must land where bmm puts it.
TEST(Attention, OneDnnEqualsPlain) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN (libtorch >= 2 or no libdnnl-dev)";
  torch::NoGradGuard no_grad;
  torch::manual_seed(9);
  for (const auto& c : kCases) {
    const auto [q, k, v] = random_inputs(c);
    const auto plain = multi_head_attention(q, k, v, c.heads, std::nullopt, {AttentionKernel::Plain});
    for (const int64_t rows : {int64_t{7}, c.q_len}) {
      AttentionOptions sliced{AttentionKernel::OneDnn, rows * c.batch * c.heads * c.k_len * 4};
      const auto out = multi_head_attention(q, k, v, c.heads, std::nullopt, sliced);
      EXPECT_TRUE(test::all_close(out, plain, kRounding, "onednn " + std::to_string(c.q_len) + " rows " +
                                                             std::to_string(rows)));
    }
    // A view that is not contiguous (every other token) goes through the same path.
    const auto every_other = q.slice(1, 0, c.q_len, 2);
    EXPECT_TRUE(test::all_close(multi_head_attention(every_other, k, v, c.heads, std::nullopt, {AttentionKernel::OneDnn}),
                                multi_head_attention(every_other, k, v, c.heads, std::nullopt, {AttentionKernel::Plain}),
                                kRounding, "onednn strided query"));
  }
}

// Training records a graph oneDNN cannot give gradients for, and a mask is not passed to it: both
// go through the chunked path, and gradients flow.
TEST(Attention, OneDnnStepsAsideForGradientsAndMasks) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  torch::manual_seed(10);
  auto q = torch::randn({1, 64, 32}, torch::requires_grad()), k = torch::randn({1, 64, 32}), v = torch::randn({1, 64, 32});
  EXPECT_FALSE(onednn_applies({&q, &k, &v}));
  auto out = multi_head_attention(q, k, v, 4, std::nullopt, {AttentionKernel::OneDnn});
  out.sum().backward();
  ASSERT_TRUE(q.grad().defined());
  EXPECT_GT(q.grad().abs().sum().item<double>(), 0.0);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(onednn_applies({&q, &k, &v}));
  const auto q_half = q.to(torch::kBFloat16);
  EXPECT_FALSE(onednn_applies({&q_half, &k, &v}));
  const auto mask = causal_attention_mask(64, torch::kFloat32, torch::kCPU);
  EXPECT_TRUE(test::all_close(multi_head_attention(q, k, v, 4, mask, {AttentionKernel::OneDnn}),
                              multi_head_attention(q, k, v, 4, mask, {AttentionKernel::Plain}), kRounding,
                              "onednn with a mask"));
}

TEST(Attention, ChunkedKeepsTheMaskRowsAligned) {
  torch::manual_seed(8);
  const int64_t len = 77, heads = 4;
  auto q = torch::randn({2, len, 32}), k = torch::randn({2, len, 32}), v = torch::randn({2, len, 32});
  const auto mask = causal_attention_mask(len, torch::kFloat32, torch::kCPU);
  const auto plain = multi_head_attention(q, k, v, heads, mask, {AttentionKernel::Plain});
  const auto chunked =
      multi_head_attention(q, k, v, heads, mask, {AttentionKernel::Chunked, 2 * 4 * len * 4 * 3});
  EXPECT_TRUE(test::all_close(chunked, plain, kRounding, "causal chunked"));
  // Row 0 may only see token 0: its output is v's token 0 in every head.
  EXPECT_TRUE(test::all_close(chunked.select(1, 0), v.select(1, 0), kRounding, "first row"));
}

TEST(Attention, KernelNamesParseAndUnknownOnesAreRefused) {
  EXPECT_EQ(parse_attention_kernel("chunked"), AttentionKernel::Chunked);
  EXPECT_EQ(parse_attention_kernel("plain"), AttentionKernel::Plain);
  EXPECT_EQ(attention_kernel_name(parse_attention_kernel("auto")), "auto");
  EXPECT_THROW(parse_attention_kernel("flash"), Error);
  if (onednn_available()) EXPECT_EQ(parse_attention_kernel("onednn"), AttentionKernel::OneDnn);
  else EXPECT_THROW(parse_attention_kernel("onednn"), Error);
  if (!fused_attention_available()) {
    EXPECT_THROW(parse_attention_kernel("fused"), Error);
  }
}

// The whole tiny UNet with every attention layer sliced still matches diffusers.
TEST(Attention, UNetWithChunkedAttentionMatchesGolden) {
  torch::NoGradGuard no_grad;
  auto models = test::load_tiny_models();
  models.unet->set_attention({AttentionKernel::Chunked, 1024});
  const auto golden = test::golden_file("unet.safetensors");
  auto out = models.unet->forward(golden.tensor("sample"), golden.tensor("timestep"),
                                  golden.tensor("encoder_hidden_states"));
  EXPECT_TRUE(test::all_close(out, golden.tensor("out"), test::kDeepForward, "unet out (chunked)"));
  if (onednn_available()) {
    models.unet->set_attention({AttentionKernel::OneDnn, 1024});
    out = models.unet->forward(golden.tensor("sample"), golden.tensor("timestep"),
                               golden.tensor("encoder_hidden_states"));
    EXPECT_TRUE(test::all_close(out, golden.tensor("out"), test::kDeepForward, "unet out (onednn)"));
  }
}

}  // namespace
}  // namespace kiln
