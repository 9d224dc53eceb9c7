// Prompt adherence in the synthetic world: prompts parse into their world words, and every picture
// the generator draws (plain and style set, sharp and box-blurred with a colour cast) is read back as the
// colour and shape its caption names.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/synthetic.h"
#include "image/png.h"
#include "lab/prompt_adherence.h"
#include "test_support.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

TEST(ParseWorldPrompt, FindsColourShapeAndBackground) {
  auto p = parse_world_prompt("a red circle, white background");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->colour, "red");
  EXPECT_EQ(p->shape, "circle");
  EXPECT_EQ(p->background, "white");

  p = parse_world_prompt("kilnglaze style, a green triangle");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->colour, "green");
  EXPECT_EQ(p->shape, "triangle");
  EXPECT_EQ(p->background, "");

  p = parse_world_prompt("A Yellow SQUARES on a Gray background!");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->colour, "yellow");
  EXPECT_EQ(p->shape, "square");
  EXPECT_EQ(p->background, "grey");

  // Two colours for one shape have no single right answer.
  EXPECT_FALSE(parse_world_prompt("black and white circles").has_value());
  EXPECT_FALSE(parse_world_prompt("red or blue squares, grey background").has_value());

  // A background that is not a world background is not recorded.
  p = parse_world_prompt("a blue square, red background");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->background, "");

  EXPECT_FALSE(parse_world_prompt("a photo of a person").has_value());
  EXPECT_FALSE(parse_world_prompt("a circle").has_value());
  EXPECT_FALSE(parse_world_prompt("a red big circle").has_value());
  EXPECT_FALSE(parse_world_prompt("grey circle").has_value());  // grey is a background, not a shape colour
  EXPECT_FALSE(parse_world_prompt("").has_value());
  EXPECT_FALSE(parse_world_prompt("redcircle").has_value());
}

// A (2r+1)² box blur with replicated borders: what a tiny diffusion model's soft edges look like.
Image box_blur(const Image& in, int r) {
  Image out(in.width, in.height);
  for (int y = 0; y < in.height; ++y) {
    for (int x = 0; x < in.width; ++x) {
      int sum[3] = {0, 0, 0}, n = 0;
      for (int dy = -r; dy <= r; ++dy) {
        for (int dx = -r; dx <= r; ++dx) {
          const Rgb c = in.at(std::clamp(x + dx, 0, in.width - 1), std::clamp(y + dy, 0, in.height - 1));
          sum[0] += c.r;
          sum[1] += c.g;
          sum[2] += c.b;
          ++n;
        }
      }
      out.set(x, y,
              Rgb{static_cast<std::uint8_t>((sum[0] + n / 2) / n),
                  static_cast<std::uint8_t>((sum[1] + n / 2) / n),
                  static_cast<std::uint8_t>((sum[2] + n / 2) / n)});
    }
  }
  return out;
}

// A slight colour cast, as a generated picture has: +12 red, -10 green, +8 blue, clamped.
Image shift(Image image) {
  const int delta[3] = {12, -10, 8};
  for (size_t i = 0; i < image.pixels.size(); ++i)
    image.pixels[i] = static_cast<std::uint8_t>(std::clamp(image.pixels[i] + delta[i % 3], 0, 255));
  return image;
}

std::string caption_of(const fs::path& png) {
  std::ifstream in(fs::path(png).replace_extension(".txt"));
  std::string line;
  std::getline(in, line);
  return line;
}

struct Cells {
  std::vector<std::pair<WorldPrompt, Image>> sharp, blurred;
  std::vector<std::string> names;
};

Cells load(const fs::path& dir, int blur_radius) {
  Cells cells;
  std::vector<fs::path> pngs;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".png") pngs.push_back(e.path());
  std::sort(pngs.begin(), pngs.end());
  for (const auto& png : pngs) {
    const auto prompt = parse_world_prompt(caption_of(png));
    EXPECT_TRUE(prompt.has_value()) << png;
    if (!prompt) continue;
    const Image image = read_png(png);
    cells.sharp.emplace_back(*prompt, image);
    cells.blurred.emplace_back(*prompt, shift(box_blur(image, blur_radius)));
    cells.names.push_back(png.filename().string() + " \"" + caption_of(png) + "\"");
  }
  return cells;
}

// Every mismatch, for the failure message.
std::string misreadings(const Cells& cells, const std::vector<std::pair<WorldPrompt, Image>>& which) {
  std::string out;
  for (size_t i = 0; i < which.size(); ++i) {
    const auto r = read_shape(which[i].second);
    if (r.found && r.colour == which[i].first.colour && r.shape == which[i].first.shape) continue;
    out += cells.names[i] + " read as " + (r.found ? r.colour + " " + r.shape : "nothing") + " (fill " +
           std::to_string(r.fill_ratio) + ", fraction " + std::to_string(r.foreground_fraction) +
           ", contrast " + std::to_string(r.contrast) + ")\n";
  }
  return out;
}

class ReadShape : public test::TempDirTest {};

// Assertion: 100 % of colours and at least 95 % of shapes (and of both) read right, sharp and after
// a radius-2 box blur with a colour cast, at 64 and at 128 pixels.
TEST_F(ReadShape, ReadsTheSyntheticWorld) {
  for (const int size : {64, 128}) {
    const fs::path dir = dir_ / std::to_string(size);
    write_synthetic_dataset(dir, 60, size, 11);
    const Cells cells = load(dir, 2);
    ASSERT_EQ(cells.sharp.size(), 60u);
    for (const auto* set : {&cells.sharp, &cells.blurred}) {
      const PromptAdherence a = prompt_adherence(*set);
      const std::string what = (set == &cells.sharp ? "sharp " : "blurred ") + std::to_string(size) + "px";
      EXPECT_EQ(a.cells, 60) << what;
      EXPECT_EQ(a.colour, 1.0) << what << "\n" << misreadings(cells, *set);
      EXPECT_GE(a.shape, 0.95) << what << "\n" << misreadings(cells, *set);
      EXPECT_GE(a.both, 0.95) << what << "\n" << misreadings(cells, *set);
    }
  }
}

TEST_F(ReadShape, ReadsTheBackground) {
  write_synthetic_dataset(dir_, 30, 64, 3);
  const Cells cells = load(dir_, 2);
  for (size_t i = 0; i < cells.sharp.size(); ++i) {
    EXPECT_EQ(read_shape(cells.sharp[i].second).background, cells.sharp[i].first.background)
        << cells.names[i];
    EXPECT_EQ(read_shape(cells.blurred[i].second).background, cells.sharp[i].first.background)
        << cells.names[i];
  }
}

// The style set's striped background and orange rim: the stripes are recognised as background
// and the rim is left out of the colour, so the shape's own colour and kind still read.
// Assertion: 100 % of colours and at least 95 % of both, sharp and after a radius-2 box blur.
TEST_F(ReadShape, ReadsTheStyleSet) {
  write_style_dataset(dir_, 40, 64, 5, "kilnglaze style");
  const Cells cells = load(dir_, 2);
  ASSERT_EQ(cells.sharp.size(), 40u);
  EXPECT_EQ(read_shape(cells.sharp[0].second).background, "striped");
  const PromptAdherence sharp = prompt_adherence(cells.sharp), blurred = prompt_adherence(cells.blurred);
  EXPECT_EQ(sharp.colour, 1.0) << misreadings(cells, cells.sharp);
  EXPECT_GE(sharp.both, 0.95) << misreadings(cells, cells.sharp);
  EXPECT_EQ(blurred.colour, 1.0) << misreadings(cells, cells.blurred);
  EXPECT_GE(blurred.both, 0.95) << misreadings(cells, cells.blurred);
}

TEST(ReadShapeEdgeCases, BlankAndNoisyPicturesReadAsNothing) {
  for (const Rgb fill : {Rgb{255, 255, 255}, Rgb{0, 0, 0}, Rgb{128, 128, 128}, Rgb{200, 30, 30}}) {
    const auto r = read_shape(Image(64, 64, fill));
    EXPECT_FALSE(r.found);
    EXPECT_EQ(r.colour, "");
    EXPECT_EQ(r.shape, "");
  }
  // A dot far under 3 % of the picture.
  Image dot(64, 64, Rgb{255, 255, 255});
  dot.fill_rect(30, 30, 4, 4, Rgb{220, 30, 30});
  EXPECT_FALSE(read_shape(dot).found);
  // A picture filled by the "shape" (over 75 %) leaves no background to stand out from.
  Image full(64, 64, Rgb{255, 255, 255});
  full.fill_rect(2, 2, 60, 60, Rgb{30, 60, 220});
  EXPECT_FALSE(read_shape(full).found);
  // Hand-drawn: a square in the corner touching two edges still reads.
  Image corner(64, 64, Rgb{128, 128, 128});
  corner.fill_rect(0, 0, 40, 40, Rgb{240, 220, 30});
  const auto r = read_shape(corner);
  ASSERT_TRUE(r.found);
  EXPECT_EQ(r.colour, "yellow");
  EXPECT_EQ(r.shape, "square");
  EXPECT_EQ(r.background, "grey");
  EXPECT_NEAR(r.foreground_fraction, 1600.0 / 4096, 1e-9);
  EXPECT_TRUE(test::error_of([] { read_shape(Image()); }).has_value());
}

// The world's own pictures are clean and style-free, sharp and blurred; the style set's show the
// style. Assertion: every one of 60 plain and 40 styled pictures at 64 px.
TEST_F(ReadShape, TellsCleanAndStyledPictures) {
  write_synthetic_dataset(dir_ / "plain", 60, 64, 11);
  write_style_dataset(dir_ / "style", 40, 64, 5, "kilnglaze style");
  const Cells plain = load(dir_ / "plain", 2), style = load(dir_ / "style", 2);
  for (const auto* set : {&plain.sharp, &plain.blurred}) {
    const PromptAdherence a = prompt_adherence(*set);
    EXPECT_EQ(a.clean, 1.0);
    EXPECT_EQ(a.style_free, 1.0);
    EXPECT_EQ(a.background, 1.0);
    EXPECT_GE(a.correct, 0.95);
  }
  for (const auto* set : {&style.sharp, &style.blurred}) EXPECT_EQ(prompt_adherence(*set).style_free, 0.0);
  // The rim alone shows the style in the sharp pictures (a radius-2 blur smears a 3-pixel rim away
  // from its colour; the stripes still show there).
  for (const auto& [prompt, image] : style.sharp) EXPECT_GT(read_shape(image).rim_fraction, kMinRimFraction);
}

// Every style look reads: the patterned background as such, the rim left out of the colour and
// counted as the look. Assertion: colour 100 %, colour and shape at least 95 %, style in every one.
TEST_F(ReadShape, ReadsEveryStyleLook) {
  for (const auto& look : synthetic_style_looks()) {
    const fs::path dir = dir_ / std::string(look.name);
    write_style_dataset(dir, 30, 64, 9, "some style", look);
    const Cells cells = load(dir, 0);
    ASSERT_EQ(cells.sharp.size(), 30u);
    const PromptAdherence a = prompt_adherence(cells.sharp, look.rim);
    EXPECT_EQ(a.colour, 1.0) << look.name;
    EXPECT_GE(a.both, 0.95) << look.name;
    EXPECT_EQ(a.style_free, 0.0) << look.name;
    EXPECT_EQ(read_shape(cells.sharp[0].second, look.rim).background, "striped") << look.name;
  }
}

// Speckles and a second blob make a picture unclean; a rim alone (plain background) shows the style.
TEST(ReadShapeEdgeCases, StrayPixelsAndRims) {
  Image square(64, 64, Rgb{255, 255, 255});
  square.fill_rect(16, 16, 32, 32, Rgb{220, 30, 30});
  EXPECT_EQ(read_shape(square).stray_fraction, 0.0);
  EXPECT_TRUE(is_clean(read_shape(square)));
  Image speckled = square;
  for (int i = 0; i < 100; ++i) speckled.set((i * 37) % 64, (i * 11) % 12, Rgb{30, 60, 220});  // top band
  const auto r = read_shape(speckled);
  ASSERT_TRUE(r.found);
  EXPECT_EQ(r.colour, "red");
  EXPECT_NEAR(r.stray_fraction, 100.0 / 4096, 1e-9);  // all 100 stand out, none near the square
  EXPECT_FALSE(is_clean(r));
  Image rimmed(64, 64, Rgb{128, 128, 128});
  rimmed.fill_rect(16, 16, 32, 32, kStyleRim);
  rimmed.fill_rect(20, 20, 24, 24, Rgb{30, 60, 220});
  const auto rim = read_shape(rimmed);
  EXPECT_EQ(rim.colour, "blue");
  EXPECT_NEAR(rim.rim_fraction, (1024.0 - 576.0) / 4096.0, 1e-9);
  EXPECT_TRUE(shows_style(rim));
  EXPECT_FALSE(shows_style(read_shape(square)));
}

TEST(PromptAdherenceScore, CountsColourShapeAndBoth) {
  Image red_square(64, 64, Rgb{255, 255, 255});
  red_square.fill_rect(16, 16, 32, 32, Rgb{220, 30, 30});
  const std::vector<std::pair<WorldPrompt, Image>> cells = {
      {{"red", "square", ""}, red_square},                  // both right
      {{"red", "circle", ""}, red_square},                  // colour right
      {{"blue", "square", ""}, red_square},                 // shape right
      {{"red", "square", ""}, Image(64, 64, Rgb{9, 9, 9})}  // nothing drawn
  };
  const PromptAdherence a = prompt_adherence(cells);
  EXPECT_EQ(a.cells, 4);
  EXPECT_DOUBLE_EQ(a.colour, 0.5);
  EXPECT_DOUBLE_EQ(a.shape, 0.5);
  EXPECT_DOUBLE_EQ(a.both, 0.25);
  EXPECT_DOUBLE_EQ(a.background, 1.0);  // no background asked: any plain one is right
  EXPECT_DOUBLE_EQ(a.clean, 0.75);      // the blank picture has no shape
  EXPECT_DOUBLE_EQ(a.correct, 0.25);
  EXPECT_DOUBLE_EQ(a.style_free, 1.0);
  const PromptAdherence asked = prompt_adherence({{{"red", "square", "black"}, red_square}});
  EXPECT_EQ(asked.background, 0.0);
  EXPECT_EQ(asked.correct, 0.0);
  const PromptAdherence none = prompt_adherence({});
  EXPECT_EQ(none.cells, 0);
  EXPECT_EQ(none.both, 0.0);
}

}  // namespace
}  // namespace kiln
