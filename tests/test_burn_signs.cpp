// The model-agnostic measures the burn diagnosis reads, on constructed pictures and embeddings with
// known values: change from the base, the look descriptor and style bleed, prompt drift, and how
// crossed signs are blamed on a part and turned into the run's summary.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "lab/burn_signs.h"
#include "lab/diagnosis.h"
#include "lab/image_stats.h"
#include "lab/look.h"
#include "lab/prompt_drift.h"
#include "test_support.h"

namespace kiln {
namespace {

constexpr Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0};

// Diagonal stripes of two colours, `period` pixels per pair.
Image stripes(int size, Rgb a, Rgb b, int period) {
  Image image(size, size);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) image.set(x, y, ((x + y) / (period / 2)) % 2 == 0 ? a : b);
  return image;
}

TEST(PictureChange, RmsDifferenceOfOneCell) {
  EXPECT_EQ(rms_difference(Image(8, 8, kWhite), Image(8, 8, kWhite)), 0.0);
  EXPECT_DOUBLE_EQ(rms_difference(Image(8, 8, kWhite), Image(8, 8, kBlack)), 1.0);
  Image half(8, 8, kBlack);
  half.fill_rect(0, 0, 8, 4, kWhite);  // half the pixels differ fully: RMS sqrt(1/2)
  EXPECT_DOUBLE_EQ(rms_difference(half, Image(8, 8, kBlack)), std::sqrt(0.5));
  EXPECT_TRUE(test::error_of([] { rms_difference(Image(8, 8), Image(8, 9)); }).has_value());
}

TEST(Look, HistogramsOfConstructedPictures) {
  const LookDescriptor flat = describe_look(Image(16, 16, kWhite));
  EXPECT_EQ(flat.colour.back(), 1.0);  // every pixel in the brightest joint bin
  EXPECT_EQ(flat.strength[0], 1.0);    // no gradient anywhere
  for (const double o : flat.orientation) EXPECT_EQ(o, 0.0);
  EXPECT_EQ(look_distance(flat, flat), 0.0);

  // Black and white halves split the colour histogram evenly between its two extreme bins.
  Image halves(16, 16, kBlack);
  halves.fill_rect(0, 0, 16, 8, kWhite);
  const LookDescriptor h = describe_look(halves);
  EXPECT_DOUBLE_EQ(h.colour.front(), 0.5);
  EXPECT_DOUBLE_EQ(h.colour.back(), 0.5);
  // The only edge is horizontal: the gradient points along y, orientation π/2, bin 4 of 8.
  EXPECT_DOUBLE_EQ(h.orientation[4], 1.0);
  // Colour histograms overlap by half; strength: 2 of 16 rows hold the edge's gradient.
  EXPECT_NEAR(look_distance(flat, h), (0.5 + 0.5 + 2.0 / 16) / 3, 1e-12);

  // Diagonal stripes: away from the borders every gradient points along (1, 1), 45°: bin 2 (or 1,
  // should π/4 round down).
  const LookDescriptor striped = describe_look(stripes(32, Rgb{230, 40, 200}, Rgb{40, 220, 220}, 4));
  EXPECT_GT(striped.orientation[2] + striped.orientation[1], 0.8);
  EXPECT_TRUE(test::error_of([] { describe_look(Image()); }).has_value());
  EXPECT_TRUE(test::error_of([] { mean_look({}); }).has_value());
}

TEST(Look, StyleBleedIsTheShareOfTheTrainingLookGained) {
  const Rgb magenta{230, 40, 200}, cyan{40, 220, 220};
  const LookDescriptor base = mean_look({Image(16, 16, kWhite), Image(16, 16, Rgb{128, 128, 128})});
  const LookDescriptor target = mean_look({stripes(16, magenta, cyan, 4)});
  EXPECT_EQ(look_gain_towards(base, base, target), 0.0);
  EXPECT_DOUBLE_EQ(look_gain_towards(target, base, target), 1.0);
  // Half the pictures taking on the look: half of every histogram's gain.
  const LookDescriptor white = mean_look({Image(16, 16, kWhite), Image(16, 16, kWhite)});
  const LookDescriptor half = mean_look({Image(16, 16, kWhite), stripes(16, magenta, cyan, 4)});
  EXPECT_NEAR(look_gain_towards(half, white, target), 0.5, 1e-12);
  // Losing the look, or changing in a way the training look does not (a flat blue cast), gains nothing.
  EXPECT_EQ(look_gain_towards(white, half, target), 0.0);
  EXPECT_EQ(look_gain_towards(mean_look({Image(16, 16, Rgb{0, 0, 255}), Image(16, 16, kWhite)}), white, target), 0.0);
  // Stripes appearing among washed-out pictures still count in full: half the pictures pale blue
  // (a cast the training set does not have: nothing), half striped (half the look).
  const LookDescriptor washed = mean_look({Image(16, 16, Rgb{190, 200, 250}), stripes(16, magenta, cyan, 4)});
  EXPECT_NEAR(look_gain_towards(washed, white, target), 0.5, 1e-12);
  // A base that already has the look: nothing to measure.
  EXPECT_EQ(look_gain_towards(base, target, target), 0.0);
}

// measure_cells: change and style bleed cell by cell against the base's cells of the same prompt
// and seed; two of four control cells turning into the training look is a bleed of one half, and a
// cell washed out in a colour the training set does not have adds nothing to it.
TEST(BurnSigns, StyleBleedAndChangeAreMeasuredCellByCell) {
  const Rgb magenta{230, 40, 200}, cyan{40, 220, 220}, pale{190, 200, 250};
  const Image white(16, 16, kWhite), striped = stripes(16, magenta, cyan, 4);
  const auto cells = [](std::vector<Image> pictures) {
    DrawnCells drawn;
    drawn.control_prompts = {"a white square", "a white circle"};
    drawn.control = {{pictures[0], pictures[1]}, {pictures[2], pictures[3]}};
    return drawn;
  };
  const LookDescriptor training = mean_look({striped});
  const ModelImageStats base = measure_cells(cells({white, white, white, white}), nullptr, training);
  EXPECT_FALSE(base.style_bleed.has_value());
  const auto now = measure_cells(cells({striped, white, Image(16, 16, pale), striped}), &base, training);
  ASSERT_TRUE(now.style_bleed.has_value());
  EXPECT_NEAR(*now.style_bleed, 0.5, 1e-12);
  double change = 0;
  for (const Image& cell : {striped, white, Image(16, 16, pale), striped}) change += rms_difference(cell, white);
  EXPECT_NEAR(*now.change_control, change / 4, 1e-12);
  EXPECT_FALSE(now.change_styled.has_value());
  DrawnCells fewer;
  fewer.control_prompts = {"a white square"};
  fewer.control = {{white, white}};
  EXPECT_TRUE(test::error_of([&] { measure_cells(fewer, &base, training); }).has_value());
}

TEST(PromptDrift, RelativeChangeOfTheConditioningWithoutStartTokens) {
  torch::manual_seed(3);
  const auto e0 = torch::randn({1, 154, 8});  // two 77-token chunks
  EXPECT_EQ(prompt_drift({e0}, {e0}), 0.0);
  // float32 conditioning: exact to its precision.
  EXPECT_NEAR(prompt_drift({e0 * 2}, {e0}), 1.0, 1e-6);
  EXPECT_NEAR(prompt_drift({e0 * 1.25, e0}, {e0, e0}), 0.125, 1e-6);  // the mean over prompts
  // Start tokens (0 and 77) say nothing about the prompt: changing them changes nothing.
  auto start_changed = e0.clone();
  start_changed.index_put_({0, 0}, 100.0);
  start_changed.index_put_({0, 77}, -100.0);
  EXPECT_EQ(prompt_drift({start_changed}, {e0}), 0.0);
  EXPECT_TRUE(test::error_of([&] { prompt_drift({e0}, {}); }).has_value());
  EXPECT_TRUE(test::error_of([&] { prompt_drift({e0}, {torch::randn({1, 77, 8})}); }).has_value());
}

ModelImageStats base_stats() {
  ModelImageStats base;
  base.mean = {0.2, 0.2, 30, 0.1};
  base.diversity = 0.3;
  base.adherence = PromptAdherence{1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10};
  return base;
}

TEST(BurnSigns, EachSignCrossesItsOwnThreshold) {
  const ModelImageStats base = base_stats();
  ModelImageStats now = base;
  now.change_control = 0.10;  // under 0.15
  now.style_bleed = 0.21;     // over 0.20
  now.prompt_drift = 0.5;     // over 0.30
  now.mean.saturation = 0.24;  // +20 %: under 25 %
  now.diversity = 0.15;        // -50 %
  const auto signs = crossed_signs(now, base, {});
  ASSERT_EQ(signs.size(), 3u);
  EXPECT_EQ(signs[0].text, "seed diversity -50%");
  EXPECT_EQ(signs[0].part, Part::Unet);
  EXPECT_EQ(signs[1].text, "style bleed 21%");
  EXPECT_EQ(signs[1].part, Part::Unet);
  EXPECT_EQ(signs[2].text, "prompt drift 0.50");
  EXPECT_EQ(signs[2].part, Part::TextEncoder);
  // Each sign counts as value / threshold in the burn score: 0.5/0.3 + 0.21/0.2 + 0.1/0.15 + 0.2/0.25 + 0.5/0.3.
  EXPECT_NEAR(burn_score(now, base, {}), 0.5 / 0.3 + 0.21 / 0.2 + 0.10 / 0.15 + 0.2 / 0.25 + 0.5 / 0.3, 1e-12);
  EXPECT_TRUE(crossed_signs(base, base, {}).empty());
}

// An adherence drop counts only over enough cells: 3 of 3 -> 2 of 3 is one picture, not a burn.
TEST(BurnSigns, AdherenceNeedsEnoughCellsAndThresholdsAreFoundByName) {
  ModelImageStats base = base_stats();
  ModelImageStats now = base;
  now.adherence = PromptAdherence{0.6, 0.6, 0.6, 1.0, 1.0, 0.6, 1.0, 10};
  EXPECT_NEAR(sign_value("prompt adherence", now, base), 0.4, 1e-12);
  now.adherence->cells = base.adherence->cells = kMinAdherenceCells - 1;
  EXPECT_EQ(sign_value("prompt adherence", now, base), 0.0);
  EXPECT_TRUE(crossed_signs(now, base, {}).empty());

  DiagnosisThresholds t;
  t.style_bleed = 0.42;
  EXPECT_EQ(sign_threshold("style bleed", t), 0.42);
  EXPECT_EQ(sign_threshold("prompt drift", t), 0.30);
  EXPECT_TRUE(test::error_of([&] { sign_threshold("sharpness", t); }).has_value());
  // At every_sign_thresholds() any burn-ward value at all is a crossed sign.
  now = base;
  now.style_bleed = 0.01;
  now.mean.contrast = 0.2001;
  const auto signs = crossed_signs(now, base, every_sign_thresholds());
  ASSERT_EQ(signs.size(), 2u);
  EXPECT_EQ(signs[0].name, "contrast");
  EXPECT_EQ(signs[1].name, "style bleed");
}

CheckpointDiagnosis checkpoint(const std::string& label, const ModelImageStats& images, double te, double unet) {
  CheckpointDiagnosis c;
  c.label = label;
  c.images = images;
  c.drift = {{"te", te, 10}, {"unet", unet, 10}};
  return c;
}

// Without a swap test a sign goes to its default part unless that part did not train; with one, to
// the part whose half-swapped model reproduces more of it.
TEST(BurnSigns, TheSwapTestBlamesThePartThatCausesEachSign) {
  const ModelImageStats base = base_stats();
  ModelImageStats bled = base;
  bled.style_bleed = 0.6;
  bled.prompt_drift = 0.4;
  auto c = checkpoint("e0002", bled, 0.01, 0.01);
  auto signs = attributed_signs(c, base, {});
  ASSERT_EQ(signs.size(), 2u);
  EXPECT_EQ(signs[0].part, Part::Unet);
  EXPECT_EQ(signs[1].part, Part::TextEncoder);
  // The trained text encoder alone makes the bleed (it learnt to ask for the look everywhere).
  ModelImageStats unet_only = base, te_only = bled;
  unet_only.style_bleed = 0.05;
  unet_only.prompt_drift = 0.0;
  c.swap = SwapTest{unet_only, te_only};
  signs = attributed_signs(c, base, {});
  EXPECT_EQ(signs[0].part, Part::TextEncoder);
  EXPECT_EQ(signs[1].part, Part::TextEncoder);
  EXPECT_EQ(checkpoint_verdict(c, base, {}),
            "e0002: UNet within range; text encoder over-trained: style bleed 60%, prompt drift 0.40 (signs "
            "attributed by the swap test; drift: text encoder 0.0100, UNet 0.0100)");
  // A frozen UNet is never blamed without a swap test.
  auto frozen = checkpoint("e0002", bled, 0.01, 0.0);
  for (const auto& sign : attributed_signs(frozen, base, {})) EXPECT_EQ(sign.part, Part::TextEncoder);
}

TEST(BurnSigns, SummaryNamesWhereEachPartBeganAndTheCheckpointToKeep) {
  Diagnosis d;
  d.base = base_stats();
  ModelImageStats burnt = d.base;
  burnt.change_control = 0.3;
  for (int i = 1; i <= 4; ++i) {
    auto c = checkpoint("e000" + std::to_string(i), i >= 3 ? burnt : d.base, 0.0, 0.01 * i);
    c.signs = attributed_signs(c, d.base, {});
    d.checkpoints.push_back(c);
  }
  summarise(d);
  ASSERT_EQ(d.summary.size(), 3u);
  EXPECT_EQ(d.summary[0], "UNet over-trained from e0003 (2 of 4 checkpoints flagged): control pictures changed 0.30");
  EXPECT_EQ(d.summary[1], "text encoder unchanged (not trained)");
  EXPECT_EQ(d.summary[2], "recommended checkpoint: e0002 (the last before the first burn sign, at e0003)");
  ASSERT_TRUE(d.recommended.has_value());
  EXPECT_EQ(*d.recommended, 1u);
  EXPECT_EQ(d.to_json()["recommended"]["label"], "e0002");

  d.checkpoints[0].signs = d.checkpoints[2].signs;  // burnt from the first checkpoint
  summarise(d);
  EXPECT_FALSE(d.recommended.has_value());
  EXPECT_TRUE(d.to_json()["recommended"].is_null());
  EXPECT_NE(d.summary[2].find("none; the first (e0001) already shows burn signs"), std::string::npos);

  for (auto& c : d.checkpoints) c.signs.clear();
  summarise(d);
  EXPECT_EQ(d.summary[0], "UNet within range at every checkpoint");
  EXPECT_EQ(*d.recommended, 3u);
}

}  // namespace
}  // namespace kiln
