// The memory-saving attention paths against the plain one: slicing the queries changes which
// scores exist at once, never the result beyond fp32 rounding.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "golden_compare.h"
#include "models/attention.h"
#include "util/error.h"

namespace kiln {
namespace {

constexpr test::Tolerance kRounding{1e-6, 1e-5};

struct Case {
  int64_t batch, q_len, k_len, heads, head_dim;
};

TEST(Attention, ChunkedEqualsPlainForSelfAndCrossAttention) {
  torch::manual_seed(7);
  for (const auto& c : {Case{2, 300, 300, 8, 8}, Case{2, 257, 77, 8, 40}, Case{1, 1024, 1024, 1, 64}}) {
    auto q = torch::randn({c.batch, c.q_len, c.heads * c.head_dim});
    auto k = torch::randn({c.batch, c.k_len, c.heads * c.head_dim});
    auto v = torch::randn({c.batch, c.k_len, c.heads * c.head_dim});
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
}

}  // namespace
}  // namespace kiln
