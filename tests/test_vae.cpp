// VAE golden test: kiln's AutoencoderKL against diffusers on the tiny model — encoder output,
// moments, the latent distribution and the decode — and the latent scaling constant.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>

#include "golden_compare.h"
#include "models/vae.h"

namespace kiln {
namespace {

using test::all_close;

TEST(VAE, EncodeMatchesDiffusers) {
  torch::NoGradGuard no_grad;
  auto models = test::load_tiny_models();
  const auto golden = test::golden_file("vae.safetensors");
  const auto image = golden.tensor("image");
  auto encoder_out = models.vae->encoder(image);
  EXPECT_TRUE(
      all_close(encoder_out, golden.tensor("intermediate.encoder_out"), test::kSingleForward, "encoder_out"));
  EXPECT_TRUE(all_close(models.vae->quant_conv(encoder_out), golden.tensor("intermediate.moments"),
                        test::kSingleForward, "moments"));
  auto dist = models.vae->encode(image);
  EXPECT_TRUE(all_close(dist.mean, golden.tensor("latent_dist_mean"), test::kSingleForward, "mean"));
  EXPECT_TRUE(all_close(dist.logvar, golden.tensor("latent_dist_logvar"), test::kSingleForward, "logvar"));
  EXPECT_TRUE(all_close(dist.std, golden.tensor("latent_dist_std"), test::kSingleForward, "std"));
  std::cout << "[ reached ] vae mean: max abs "
            << test::max_abs_error(dist.mean, golden.tensor("latent_dist_mean")) << ", logvar: max abs "
            << test::max_abs_error(dist.logvar, golden.tensor("latent_dist_logvar")) << "\n";
}

TEST(VAE, DecodeMatchesDiffusers) {
  torch::NoGradGuard no_grad;
  auto models = test::load_tiny_models();
  const auto golden = test::golden_file("vae.safetensors");
  const auto mean = golden.tensor("latent_dist_mean");
  EXPECT_TRUE(all_close(models.vae->post_quant_conv(mean), golden.tensor("intermediate.post_quant_conv"),
                        test::kSingleForward, "post_quant_conv"));
  auto decoded = models.vae->decode(mean);
  const auto expected = golden.tensor("decoded_from_mean");
  EXPECT_TRUE(all_close(decoded, expected, test::kDeepForward, "decoded_from_mean"));
  std::cout << "[ reached ] vae decode: max abs " << test::max_abs_error(decoded, expected) << " (|ref| max "
            << expected.abs().max().item<double>() << ")\n";
}

TEST(VAE, SampleUsesTheGivenNoiseAndScalingIsSD1) {
  torch::NoGradGuard no_grad;
  AutoencoderKL vae(tiny_configs().vae);
  auto dist = vae->encode(torch::zeros({1, 3, 32, 32}));
  auto noise = torch::randn_like(dist.mean);
  EXPECT_TRUE(torch::equal(dist.sample(noise), dist.mean + dist.std * noise));
  EXPECT_EQ(vae->scaling_factor(), kSD1LatentScale);
  EXPECT_EQ(kSD1LatentScale, 0.18215);
}

}  // namespace
}  // namespace kiln
