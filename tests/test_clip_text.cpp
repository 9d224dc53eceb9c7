// CLIP text encoder golden test: kiln's CLIPTextModel against transformers on the tiny model —
// every hidden state, the final output, CLIP skip 2 and the pooled output — and the tokenizer feeding it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>

#include "golden_compare.h"
#include "models/clip_text.h"
#include "text/clip_tokenizer.h"

namespace kiln {
namespace {

using test::all_close;

TEST(CLIPText, MatchesTransformers) {
  torch::NoGradGuard no_grad;
  auto models = test::load_tiny_models();
  const auto golden = test::golden_file("text_encoder.safetensors");
  const auto ids = golden.tensor("input_ids");
  auto out = models.text_encoder->forward(ids, /*output_hidden_states=*/true);
  const auto expected = golden.tensor("last_hidden_state");
  EXPECT_TRUE(all_close(out.last_hidden_state, expected, test::kSingleForward, "last_hidden_state"));
  std::cout << "[ reached ] text encoder last_hidden_state: max abs "
            << test::max_abs_error(out.last_hidden_state, expected) << "\n";
  EXPECT_TRUE(
      all_close(out.pooler_output, golden.tensor("pooler_output"), test::kSingleForward, "pooler_output"));
  ASSERT_EQ(out.hidden_states.size(), 4u);
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    const auto name = "hidden_states." + std::to_string(i);
    EXPECT_TRUE(all_close(out.hidden_states[i], golden.tensor(name), test::kSingleForward, name));
  }
}

TEST(CLIPText, ClipSkipTwoIsPenultimateLayerThroughFinalNorm) {
  torch::NoGradGuard no_grad;
  auto models = test::load_tiny_models();
  const auto golden = test::golden_file("text_encoder.safetensors");
  const auto ids = golden.tensor("input_ids");
  auto skip2 = models.text_encoder->encode(ids, 2);
  const auto expected = golden.tensor("penultimate_hidden_state_final_ln");
  EXPECT_TRUE(all_close(skip2, expected, test::kSingleForward, "clip skip 2"));
  std::cout << "[ reached ] text encoder clip skip 2: max abs " << test::max_abs_error(skip2, expected)
            << "\n";
  EXPECT_TRUE(all_close(models.text_encoder->encode(ids, 1),
                        models.text_encoder->forward(ids).last_hidden_state, test::kExact,
                        "clip skip 1 = last_hidden_state"));
  EXPECT_THROW(models.text_encoder->encode(ids, 4), c10::Error);
}

TEST(CLIPText, TokenizerProducesTheGoldenInputIds) {
  // The prompts of text_encoder.safetensors (its README), through kiln's tokenizer.
  const auto tokenizer = CLIPTokenizer::from_embedded();
  const auto golden = test::golden_file("text_encoder.safetensors").tensor("input_ids");
  const char* prompts[] = {"a photo of a red circle",
                           "masterpiece, best quality, 1girl, (red hair:1.2), looking at viewer"};
  for (int i = 0; i < 2; ++i) {
    auto ids = tokenizer.encode_sd(prompts[i]);
    EXPECT_TRUE(torch::equal(torch::tensor(ids, torch::kLong), golden[i])) << prompts[i];
  }
}

TEST(CLIPText, RejectsPromptsLongerThanThePositionTable) {
  torch::NoGradGuard no_grad;
  CLIPTextModel model(tiny_configs().text_encoder);
  EXPECT_THROW(model->forward(torch::zeros({1, 78}, torch::kLong)), c10::Error);
}

}  // namespace
}  // namespace kiln
