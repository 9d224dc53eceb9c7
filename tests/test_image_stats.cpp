// kiln_lab image statistics on constructed images whose values can be worked out by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "image/image.h"
#include "lab/image_stats.h"
#include "util/error.h"

using kiln::Image;
using kiln::Rgb;

namespace {

constexpr Rgb kBlack{0, 0, 0};
constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kRed{255, 0, 0};
constexpr Rgb kBlue{0, 0, 255};

// Squares of `block` pixels alternating black and white; block 1 is the Nyquist checkerboard.
Image checkerboard(int size, int block) {
  Image image(size, size);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) image.set(x, y, ((x / block + y / block) % 2) ? kWhite : kBlack);
  return image;
}

Image horizontal_gradient(int size) {
  Image image(size, size);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      const auto v = static_cast<std::uint8_t>(x * 255 / (size - 1));
      image.set(x, y, {v, v, v});
    }
  return image;
}

Image left_right(int w, int h, Rgb left, Rgb right) {
  Image image(w, h, left);
  image.fill_rect(w / 2, 0, w - w / 2, h, right);
  return image;
}

TEST(ImageStats, GreyImageIsFlat) {
  const Image grey(16, 12, {128, 128, 128});
  const kiln::ImageStats s = kiln::image_stats(grey);
  EXPECT_EQ(s.saturation, 0.0);
  EXPECT_EQ(s.contrast, 0.0);
  EXPECT_EQ(s.colourfulness, 0.0);
  EXPECT_EQ(s.high_frequency, 0.0);
}

TEST(ImageStats, BlackHasZeroSaturation) { EXPECT_EQ(kiln::mean_saturation(Image(4, 4, kBlack)), 0.0); }

TEST(ImageStats, PureRedIsFullySaturated) { EXPECT_DOUBLE_EQ(kiln::mean_saturation(Image(8, 8, kRed)), 1.0); }

TEST(ImageStats, SaturationAveragesOverPixels) {
  // (255 - 51) / 255 = 0.8 on one half, 0 on the other.
  const Image image = left_right(4, 2, {255, 51, 51}, {200, 200, 200});
  EXPECT_DOUBLE_EQ(kiln::mean_saturation(image), 0.4);
}

TEST(ImageStats, CheckerboardContrastIsExactlyHalf) {
  EXPECT_EQ(kiln::rms_contrast(checkerboard(16, 1)), 0.5);
}

TEST(ImageStats, HalfBlackHalfWhiteContrastIsHalf) {
  EXPECT_EQ(kiln::rms_contrast(left_right(10, 6, kBlack, kWhite)), 0.5);
}

TEST(ImageStats, ColourfulnessOfRedAndBlueMatchesFormula) {
  const Image image = left_right(8, 4, kRed, kBlue);
  // rg: red 255, blue 0.  yb: red 127.5, blue -255.  Half the pixels each.
  const double mu_rg = 127.5, sigma_rg = 127.5;
  const double mu_yb = (127.5 - 255.0) / 2, sigma_yb = (127.5 + 255.0) / 2;
  const double expected =
      std::sqrt(sigma_rg * sigma_rg + sigma_yb * sigma_yb) + 0.3 * std::sqrt(mu_rg * mu_rg + mu_yb * mu_yb);
  EXPECT_NEAR(kiln::colourfulness(image), expected, 1e-9);
}

TEST(ImageStats, ColourfulnessOfUniformColourIsMeanTermOnly) {
  // No spread, so only 0.3 · |(μ_rg, μ_yb)| = 0.3 · |(255, 127.5)| remains.
  EXPECT_NEAR(kiln::colourfulness(Image(5, 5, kRed)), 0.3 * std::hypot(255.0, 127.5), 1e-9);
}

TEST(ImageStats, HighFrequencyOrdersCheckerboardBlocksGradient) {
  const double fine = kiln::high_frequency_energy(checkerboard(32, 1));
  const double blocks = kiln::high_frequency_energy(checkerboard(32, 8));
  const double smooth = kiln::high_frequency_energy(horizontal_gradient(32));
  EXPECT_GT(fine, blocks);
  EXPECT_GT(blocks, smooth);
  EXPECT_GT(smooth, 0.0);
  EXPECT_GT(fine, 0.8);
  EXPECT_LE(fine, 1.0);
  EXPECT_LT(smooth, 0.01);
}

TEST(ImageStats, HighFrequencyIsOneForInteriorOfCheckerboard) {
  // Border pixels see replicated neighbours and lose some Laplacian energy; a large board approaches 1.
  EXPECT_GT(kiln::high_frequency_energy(checkerboard(256, 1)), 0.99);
}

TEST(ImageStats, IdenticalImagesHaveNoDiversity) {
  const Image a = checkerboard(8, 2);
  EXPECT_EQ(kiln::seed_diversity({a, a, a}), 0.0);
}

TEST(ImageStats, BlackVersusWhiteHasFullDiversity) {
  EXPECT_DOUBLE_EQ(kiln::seed_diversity({Image(6, 4, kBlack), Image(6, 4, kWhite)}), 1.0);
}

TEST(ImageStats, ImageVersusInverseOfCheckerboardHasFullDiversity) {
  const Image a = checkerboard(8, 1);
  Image inverse = a;
  for (auto& v : inverse.pixels) v = static_cast<std::uint8_t>(255 - v);
  EXPECT_DOUBLE_EQ(kiln::seed_diversity({a, inverse}), 1.0);
}

TEST(ImageStats, DiversityAveragesOverPairs) {
  // Pairs: black-black 0, black-white 1, black-white 1 -> mean 2/3.
  const Image black(3, 3, kBlack), white(3, 3, kWhite);
  EXPECT_DOUBLE_EQ(kiln::seed_diversity({black, black, white}), 2.0 / 3.0);
}

TEST(ImageStats, DiversityRejectsBadInput) {
  EXPECT_THROW(kiln::seed_diversity({Image(4, 4), Image(4, 5)}), kiln::Error);
  EXPECT_THROW(kiln::seed_diversity({Image(4, 4)}), kiln::Error);
  EXPECT_THROW(kiln::seed_diversity({}), kiln::Error);
}

TEST(ImageStats, EmptyImageThrows) {
  EXPECT_THROW(kiln::image_stats(Image()), kiln::Error);
  Image broken(2, 2);
  broken.pixels.pop_back();
  EXPECT_THROW(kiln::rms_contrast(broken), kiln::Error);
}

}  // namespace
