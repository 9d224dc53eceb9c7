// kiln_image: PNG round trips and text chunks, font rendering, grid layout and animated GIFs.
#include <gtest/gtest.h>
#include <png.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "image/font.h"
#include "image/gif.h"
#include "image/grid.h"
#include "image/image.h"
#include "image/png.h"
#include "util/error.h"
#include "test_support.h"

namespace fs = std::filesystem;
using kiln::Image;
using kiln::Rgb;

namespace {

using kiln::test::error_of;

class ImageFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
    dir_ = fs::temp_directory_path() /
           ("kiln_image_" + std::to_string(::getpid()) + "_" + std::to_string(ticks) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  std::vector<std::string> entries() {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

// Every pixel distinct in at least two channels, so a transposed or shifted row cannot pass.
Image gradient(int w, int h) {
  Image im(w, h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      im.set(x, y,
             {static_cast<std::uint8_t>(x * 7), static_cast<std::uint8_t>(y * 11),
              static_cast<std::uint8_t>((x * y + 3 * x) % 256)});
  return im;
}

int max_channel_difference(Rgb a, Rgb b) {
  return std::max({std::abs(a.r - b.r), std::abs(a.g - b.g), std::abs(a.b - b.b)});
}

const kiln::Font& font() {
  static const kiln::Font f = kiln::Font::load_default();
  return f;
}

// ---------------------------------------------------------------- Image

TEST(Image, ConstructorFillsAndAccessorsCheckBounds) {
  Image im(5, 4, {10, 20, 30});
  EXPECT_EQ(im.pixels.size(), 5u * 4u * 3u);
  EXPECT_EQ(im.at(0, 0), (Rgb{10, 20, 30}));
  EXPECT_EQ(im.at(4, 3), (Rgb{10, 20, 30}));
  im.set(4, 3, {1, 2, 3});
  EXPECT_EQ(im.at(4, 3), (Rgb{1, 2, 3}));
  EXPECT_EQ(im.pixels[(3 * 5 + 4) * 3 + 2], 3);  // row-major, RGB
  EXPECT_THROW(im.at(5, 0), kiln::Error);
  EXPECT_THROW(im.at(0, -1), kiln::Error);
  EXPECT_THROW(im.set(0, 4, {}), kiln::Error);
  EXPECT_TRUE(Image().empty());
  EXPECT_THROW(Image(-1, 3), kiln::Error);
}

TEST(Image, PasteAndFillRectClip) {
  Image dst(6, 5, {0, 0, 0});
  Image src(4, 3, {200, 100, 50});
  src.set(3, 2, {1, 1, 1});
  dst.paste(src, -2, 3);  // only src columns 2..3 and rows 0..1 land inside
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 6; ++x) {
      const bool inside = x < 2 && y >= 3;
      EXPECT_EQ(dst.at(x, y), inside ? (Rgb{200, 100, 50}) : (Rgb{0, 0, 0})) << x << "," << y;
    }
  dst.paste(src, 4, 2);  // bottom-right corner pixel of src lands outside
  EXPECT_EQ(dst.at(5, 4), (Rgb{200, 100, 50}));
  EXPECT_EQ(dst.at(3, 4), (Rgb{0, 0, 0}));

  Image f(4, 4, {9, 9, 9});
  f.fill_rect(2, -1, 10, 3, {7, 8, 9});
  int filled = 0;
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) filled += f.at(x, y) == Rgb{7, 8, 9};
  EXPECT_EQ(filled, 4);  // x 2..3, y 0..1
  EXPECT_EQ(f.at(3, 1), (Rgb{7, 8, 9}));
  EXPECT_EQ(f.at(3, 2), (Rgb{9, 9, 9}));
  f.fill_rect(10, 10, 3, 3, {0, 0, 0});  // entirely outside: no-op
  EXPECT_EQ(f.at(0, 0), (Rgb{9, 9, 9}));
}

// ---------------------------------------------------------------- PNG

TEST_F(ImageFiles, PngRoundTripIsPixelExact) {
  const Image original = gradient(37, 23);
  const fs::path p = dir_ / "gradient.png";
  kiln::write_png(p, original);
  const std::string bytes = read_bytes(p);
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
  const Image back = kiln::read_png(p);
  EXPECT_EQ(back.width, 37);
  EXPECT_EQ(back.height, 23);
  EXPECT_EQ(back.pixels, original.pixels);
  EXPECT_TRUE(kiln::read_png_text(p).empty());
  // The atomic write renamed its temporary away.
  EXPECT_EQ(entries(), std::vector<std::string>{"gradient.png"});
}

TEST_F(ImageFiles, PngTextChunksRoundTripAsA1111Expects) {
  const std::string parameters =
      "a photo of a cat, (masterpiece:1.2)\nNegative prompt: blurry\n"
      "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 37x23, Model hash: 6ce0161689";
  const std::string utf8 = "caf\xC3\xA9, \xE7\x8C\xAB";  // "café, 猫"
  const fs::path p = dir_ / "with_text.png";
  kiln::write_png(p, gradient(37, 23), {{"parameters", parameters}, {"comment", utf8}});

  const kiln::PngText text = kiln::read_png_text(p);
  ASSERT_EQ(text.size(), 2u);
  EXPECT_EQ(text[0].first, "parameters");
  EXPECT_EQ(text[0].second, parameters);
  EXPECT_EQ(text[1].first, "comment");
  EXPECT_EQ(text[1].second, utf8);

  // ASCII goes in tEXt, anything else in iTXt (flag 0 = uncompressed, empty language and key).
  const std::string bytes = read_bytes(p);
  EXPECT_NE(bytes.find(std::string("tEXtparameters\0", 15) + parameters), std::string::npos);
  EXPECT_EQ(bytes.find("iTXtparameters"), std::string::npos);
  EXPECT_NE(bytes.find(std::string("iTXtcomment\0\0\0\0\0", 16) + utf8), std::string::npos);
  EXPECT_EQ(bytes.find("tEXtcomment"), std::string::npos);
  EXPECT_EQ(kiln::read_png(p).pixels, gradient(37, 23).pixels);
}

TEST_F(ImageFiles, PngErrorsNameTheFile) {
  const fs::path not_png = dir_ / "not_a.png";
  std::ofstream(not_png) << "this is text, not a picture";
  auto message = error_of([&] { kiln::read_png(not_png); });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find(not_png.string()), std::string::npos) << *message;
  EXPECT_NE(message->find("not a PNG"), std::string::npos) << *message;
  EXPECT_TRUE(error_of([&] { kiln::read_png_text(not_png); }).has_value());

  // A PNG cut short: libpng's error comes back as kiln::Error, not a crash.
  const fs::path good = dir_ / "good.png";
  kiln::write_png(good, gradient(37, 23));
  const std::string bytes = read_bytes(good);
  const fs::path truncated = dir_ / "truncated.png";
  std::ofstream(truncated, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  message = error_of([&] { kiln::read_png(truncated); });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find(truncated.string()), std::string::npos) << *message;

  const fs::path missing = dir_ / "missing.png";
  message = error_of([&] { kiln::read_png(missing); });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find(missing.string()), std::string::npos) << *message;

  // Unwritable target: error names it, nothing is left behind.
  const fs::path nowhere = dir_ / "no_such_dir" / "out.png";
  message = error_of([&] { kiln::write_png(nowhere, gradient(4, 4)); });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find(nowhere.string()), std::string::npos) << *message;

  // Keywords libpng would silently drop are refused.
  const fs::path bad_key = dir_ / "bad_key.png";
  EXPECT_TRUE(error_of([&] { kiln::write_png(bad_key, gradient(4, 4), {{"", "x"}}); }).has_value());
  EXPECT_TRUE(error_of([&] {
                kiln::write_png(bad_key, gradient(4, 4), {{std::string(80, 'k'), "x"}});
              }).has_value());
  EXPECT_TRUE(error_of([&] { kiln::write_png(dir_ / "empty.png", Image()); }).has_value());

  std::vector<std::string> expected{"good.png", "not_a.png", "truncated.png"};
  EXPECT_EQ(entries(), expected);  // no temporaries from the failed writes
}

// PNGs kiln does not write itself (from other tools): grey, 16-bit, palette, alpha.
TEST_F(ImageFiles, PngReadConvertsOtherFormatsToRgb) {
  auto write_simplified = [&](const fs::path& p, png_uint_32 format, int w, int h, const void* pixels,
                              const void* colormap = nullptr, int colormap_entries = 0) {
    png_image desc{};
    desc.version = PNG_IMAGE_VERSION;
    desc.width = static_cast<png_uint_32>(w);
    desc.height = static_cast<png_uint_32>(h);
    desc.format = format;
    desc.colormap_entries = static_cast<png_uint_32>(colormap_entries);
    ASSERT_NE(png_image_write_to_file(&desc, p.c_str(), 0, pixels, 0, colormap), 0) << desc.message;
  };

  const std::uint8_t grey[3] = {0, 100, 255};
  write_simplified(dir_ / "grey.png", PNG_FORMAT_GRAY, 3, 1, grey);
  Image im = kiln::read_png(dir_ / "grey.png");
  ASSERT_EQ(im.width, 3);
  EXPECT_EQ(im.at(0, 0), (Rgb{0, 0, 0}));
  EXPECT_EQ(im.at(1, 0), (Rgb{100, 100, 100}));
  EXPECT_EQ(im.at(2, 0), (Rgb{255, 255, 255}));

  const std::uint16_t grey16[3] = {0, 257 * 100, 65535};  // linear 16-bit grey
  write_simplified(dir_ / "grey16.png", PNG_FORMAT_LINEAR_Y, 3, 1, grey16);
  im = kiln::read_png(dir_ / "grey16.png");
  EXPECT_EQ(im.at(1, 0), (Rgb{100, 100, 100}));
  EXPECT_EQ(im.at(2, 0), (Rgb{255, 255, 255}));

  const std::uint8_t rgba[12] = {10, 20, 30, 255, 200, 0, 0, 128, 50, 60, 70, 0};
  write_simplified(dir_ / "rgba.png", PNG_FORMAT_RGBA, 3, 1, rgba);
  im = kiln::read_png(dir_ / "rgba.png");
  EXPECT_EQ(im.at(0, 0), (Rgb{10, 20, 30}));
  // 200 * 128/255 + 255 * 127/255 = 227.9; 0 + 127 = 127.
  EXPECT_LE(max_channel_difference(im.at(1, 0), Rgb{228, 127, 127}), 1);
  EXPECT_EQ(im.at(2, 0), (Rgb{255, 255, 255}));  // fully transparent: white page

  const std::uint8_t palette[6] = {255, 0, 0, 0, 0, 255};
  const std::uint8_t indices[4] = {0, 1, 1, 0};
  write_simplified(dir_ / "palette.png", PNG_FORMAT_RGB_COLORMAP, 2, 2, indices, palette, 2);
  im = kiln::read_png(dir_ / "palette.png");
  ASSERT_EQ(im.width, 2);
  ASSERT_EQ(im.height, 2);
  EXPECT_EQ(im.at(0, 0), (Rgb{255, 0, 0}));
  EXPECT_EQ(im.at(1, 0), (Rgb{0, 0, 255}));
  EXPECT_EQ(im.at(0, 1), (Rgb{0, 0, 255}));
  EXPECT_EQ(im.at(1, 1), (Rgb{255, 0, 0}));
}

// ---------------------------------------------------------------- Font

TEST(Font, WidthGrowsWithTextAndSize) {
  const kiln::Font& f = font();
  EXPECT_EQ(f.text_width("", 20), 0);
  const int a = f.text_width("a", 20), abc = f.text_width("abc", 20), abcdef = f.text_width("abcdef", 20);
  EXPECT_GT(a, 0);
  EXPECT_GT(abc, a);
  EXPECT_GT(abcdef, abc);
  // Twice the size, about twice the width.
  const int big = f.text_width("abcdef", 40);
  EXPECT_GE(big, abcdef * 17 / 10);
  EXPECT_LE(big, abcdef * 23 / 10);
  // Kerning: DejaVu Sans pulls "AV" together.
  EXPECT_LT(f.text_width("AV", 40), f.text_width("A", 40) + f.text_width("V", 40));
  // UTF-8 is decoded: é and 猫 add width; malformed bytes still render (as U+FFFD).
  EXPECT_GT(f.text_width("caf\xC3\xA9", 20), f.text_width("caf", 20));
  EXPECT_GT(f.text_width("\xE7\x8C\xAB", 20), 0);
  EXPECT_GT(f.text_width("\xFF\xFE", 20), 0);
}

TEST(Font, DrawDarkensOnlyInsideTheTextBox) {
  const kiln::Font& f = font();
  const int px = 24, x0 = 10, y0 = 12;
  const std::string text = "Hello, grid";
  const int w = f.text_width(text, px);
  Image im(w + 40, px + 40, {255, 255, 255});
  f.draw(im, x0, y0, text, px, {0, 0, 0});
  int changed = 0, dark = 0, min_x = im.width, max_x = -1, min_y = im.height, max_y = -1;
  for (int y = 0; y < im.height; ++y)
    for (int x = 0; x < im.width; ++x) {
      const Rgb c = im.at(x, y);
      if (c == Rgb{255, 255, 255}) continue;
      ++changed;
      dark += c.r < 64;
      EXPECT_EQ(c.r, c.g);  // black over white: grey levels only
      EXPECT_EQ(c.g, c.b);
      min_x = std::min(min_x, x), max_x = std::max(max_x, x);
      min_y = std::min(min_y, y), max_y = std::max(max_y, y);
    }
  EXPECT_GT(changed, 100);
  EXPECT_GT(dark, 30);
  // Inside [x0, x0 + width) by [y0, y0 + px] (ascent to descent), with a pixel of anti-aliasing slack.
  EXPECT_GE(min_x, x0 - 1);
  EXPECT_LT(max_x, x0 + w + 1);
  EXPECT_GE(min_y, y0);
  EXPECT_LE(max_y, y0 + px);
  EXPECT_GT(max_x - min_x, w / 2);  // the whole string was drawn, not just its first glyph

  // Colour is blended, not just darkened: red text keeps full red.
  Image red(w + 40, px + 40, {255, 255, 255});
  f.draw(red, x0, y0, text, px, {255, 0, 0});
  bool saw_red = false;
  for (int y = 0; y < red.height; ++y)
    for (int x = 0; x < red.width; ++x) {
      const Rgb c = red.at(x, y);
      EXPECT_EQ(c.r, 255);
      EXPECT_EQ(c.g, c.b);
      saw_red = saw_red || c.g < 64;
    }
  EXPECT_TRUE(saw_red);

  // Text partly outside the image is clipped, not written out of bounds.
  Image small(20, 10, {255, 255, 255});
  f.draw(small, -15, -8, text, px, {0, 0, 0});
  f.draw(small, 15, 5, text, px, {0, 0, 0});
  EXPECT_EQ(small.pixels.size(), 20u * 10u * 3u);
}

TEST(Font, WrapKeepsLinesWithinWidth) {
  const kiln::Font& f = font();
  const int px = 16, max_width = 120;
  const std::string sentence =
      "a photograph of an astronaut riding a horse on the moon, highly detailed, dramatic lighting";
  const auto lines = f.wrap(sentence, px, max_width);
  ASSERT_GT(lines.size(), 2u);
  std::string joined;
  for (const std::string& line : lines) {
    EXPECT_LE(f.text_width(line, px), max_width) << line;
    EXPECT_FALSE(line.empty());
    joined += (joined.empty() ? "" : " ") + line;
  }
  EXPECT_EQ(joined, sentence);  // greedy wrapping at spaces loses and reorders nothing
  // Greedy: the next line's first word would not have fit on the previous line.
  for (std::size_t i = 0; i + 1 < lines.size(); ++i) {
    const std::string next_word = lines[i + 1].substr(0, lines[i + 1].find(' '));
    EXPECT_GT(f.text_width(lines[i] + " " + next_word, px), max_width);
  }

  EXPECT_EQ(f.wrap("short", px, 1000), std::vector<std::string>{"short"});
  EXPECT_TRUE(f.wrap("", px, 100).empty());

  // One word wider than the line is cut by characters.
  const std::string word = "Supercalifragilisticexpialidocious";
  const auto pieces = f.wrap(word, px, 50);
  ASSERT_GT(pieces.size(), 2u);
  std::string rebuilt;
  for (const std::string& piece : pieces) {
    EXPECT_LE(f.text_width(piece, px), 50) << piece;
    rebuilt += piece;
  }
  EXPECT_EQ(rebuilt, word);
  // Multi-byte characters are never split: room for one and a half "é" gives one per line.
  const std::string e_acute = "\xC3\xA9";
  const int one = f.text_width(e_acute, px);
  const auto accents = f.wrap(e_acute + e_acute + e_acute + e_acute, px, one + one / 2);
  EXPECT_EQ(accents, std::vector<std::string>(4, e_acute));
}

TEST_F(ImageFiles, FontErrorsNameTheFile) {
  const fs::path not_font = dir_ / "not_a_font.ttf";
  std::ofstream(not_font) << "definitely not a TrueType font, just some text";
  auto message = error_of([&] { kiln::Font::load(not_font); });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find(not_font.string()), std::string::npos) << *message;

  const fs::path missing = dir_ / "missing.ttf";
  const char* old = std::getenv("KILN_FONT");
  const std::string saved = old ? old : "";
  ::setenv("KILN_FONT", missing.c_str(), 1);
  message = error_of([] { kiln::Font::load_default(); });
  if (old)
    ::setenv("KILN_FONT", saved.c_str(), 1);
  else
    ::unsetenv("KILN_FONT");
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find(missing.string()), std::string::npos) << *message;
  EXPECT_NE(message->find("fonts-dejavu-core"), std::string::npos) << *message;
  EXPECT_NE(message->find("KILN_FONT"), std::string::npos) << *message;
}

// ---------------------------------------------------------------- Grid

Rgb cell_color(int row, int column) {
  return {static_cast<std::uint8_t>(30 + 70 * column), static_cast<std::uint8_t>(60 + 90 * row), 200};
}

std::vector<std::vector<Image>> solid_cells(int rows, int columns, int w, int h) {
  std::vector<std::vector<Image>> cells(rows);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < columns; ++c) cells[r].emplace_back(w, h, cell_color(r, c));
  return cells;
}

bool has_ink(const Image& im, int x0, int y0, int x1, int y1, Rgb background) {
  for (int y = std::max(y0, 0); y < std::min(y1, im.height); ++y)
    for (int x = std::max(x0, 0); x < std::min(x1, im.width); ++x)
      if (im.at(x, y) != background) return true;
  return false;
}

TEST(Grid, CellsLandWhereTheLayoutSays) {
  kiln::GridLayout layout;
  layout.title = "CFG sweep";
  layout.row_labels = {"seed 1", "seed 2"};
  layout.column_labels = {"cfg 5", "cfg 7.5", "cfg 12"};
  const int w = 64, h = 48, gap = layout.gap;
  const Image grid = kiln::make_grid(solid_cells(2, 3, w, h), layout, font());
  const kiln::GridGeometry g = kiln::plan_grid(2, 3, w, h, layout, font());

  EXPECT_EQ(g.label_pixel_height, 14);  // max(14, min(64, 48) / 12)
  EXPECT_EQ(grid.width, g.width);
  EXPECT_EQ(grid.height, g.height);
  EXPECT_GT(g.left, font().text_width("seed 1", 14));  // the margin holds the widest row label
  EXPECT_EQ(grid.width, g.left + 3 * w + 2 * gap);
  EXPECT_GT(g.top, 2 * 14);  // title line and column-label line
  EXPECT_EQ(grid.height, g.top + 2 * h + gap);

  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c) {
      // Cells are packed against the right and bottom edges, so their position follows from the
      // output size alone as well as from the plan.
      const int x = grid.width - (3 - c) * w - (2 - c) * gap;
      const int y = grid.height - (2 - r) * h - (1 - r) * gap;
      EXPECT_EQ(g.cell_x(c), x);
      EXPECT_EQ(g.cell_y(r), y);
      EXPECT_EQ(grid.at(x + w / 2, y + h / 2), cell_color(r, c)) << r << "," << c;
      // No label spills onto a cell: all four corners are intact.
      EXPECT_EQ(grid.at(x, y), cell_color(r, c));
      EXPECT_EQ(grid.at(x + w - 1, y + h - 1), cell_color(r, c));
      // Row label beside each row, column label above each column.
      EXPECT_TRUE(has_ink(grid, 0, y, g.left, y + h, layout.background)) << "row " << r;
      EXPECT_TRUE(has_ink(grid, x, g.top - 2 * 14 - 8, x + w, g.top, layout.background)) << "column " << c;
    }
  EXPECT_EQ(grid.at(g.cell_x(1) - 1, g.cell_y(0) + 5), layout.background);  // gap between columns
  EXPECT_TRUE(has_ink(grid, 0, 0, grid.width, 20, layout.background));      // title
}

TEST(Grid, SizesWithoutLabelsAndAutoTextSize) {
  const Image bare = kiln::make_grid(solid_cells(2, 3, 10, 8), {}, font());
  EXPECT_EQ(bare.width, 3 * 10 + 2 * 4);
  EXPECT_EQ(bare.height, 2 * 8 + 4);
  EXPECT_EQ(bare.at(0, 0), cell_color(0, 0));
  EXPECT_EQ(bare.at(bare.width - 1, bare.height - 1), cell_color(1, 2));

  kiln::GridLayout layout;
  layout.column_labels = {"a", "b"};
  EXPECT_EQ(kiln::plan_grid(1, 2, 512, 512, layout, font()).label_pixel_height, 42);
  layout.label_pixel_height = 20;
  EXPECT_EQ(kiln::plan_grid(1, 2, 512, 512, layout, font()).label_pixel_height, 20);
}

TEST(Grid, LongLabelsWrapInsteadOfWideningTheGrid) {
  kiln::GridLayout layout;
  const std::string long_label = "a very long row label that describes the prompt in some detail";
  layout.row_labels = {long_label, "short"};
  layout.column_labels = {"a column label long enough to need several lines", "b"};
  const int w = 128, h = 128;
  const Image grid = kiln::make_grid(solid_cells(2, 2, w, h), layout, font());
  const kiln::GridGeometry g = kiln::plan_grid(2, 2, w, h, layout, font());
  const int px = g.label_pixel_height;
  EXPECT_LT(g.left, font().text_width(long_label, px));  // wrapped onto several lines
  EXPECT_GT(g.top, 2 * px);                              // the column label took several lines
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 2; ++c) {
      EXPECT_EQ(grid.at(g.cell_x(c), g.cell_y(r)), cell_color(r, c));
      EXPECT_EQ(grid.at(g.cell_x(c) + w - 1, g.cell_y(r) + h - 1), cell_color(r, c));
    }
}

TEST(Grid, RejectsInconsistentCells) {
  auto cells = solid_cells(2, 3, 64, 48);
  cells[1][2] = Image(32, 32);
  try {
    kiln::make_grid(cells, {}, font());
    FAIL() << "mismatched cell sizes accepted";
  } catch (const kiln::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("32x32"), std::string::npos) << message;
    EXPECT_NE(message.find("64x48"), std::string::npos) << message;
  }
  auto ragged = solid_cells(2, 3, 8, 8);
  ragged[1].pop_back();
  EXPECT_THROW(kiln::make_grid(ragged, {}, font()), kiln::Error);
  EXPECT_THROW(kiln::make_grid({}, {}, font()), kiln::Error);
  kiln::GridLayout layout;
  layout.row_labels = {"only one"};
  EXPECT_THROW(kiln::make_grid(solid_cells(2, 3, 8, 8), layout, font()), kiln::Error);
}

TEST(Grid, CaptionStripSitsUnderThePicture) {
  const Image picture = gradient(100, 80);
  const Image captioned = kiln::add_caption(picture, "step 500", font());
  EXPECT_EQ(captioned.width, 100);
  EXPECT_GT(captioned.height, 80 + 14);
  for (int y = 0; y < 80; ++y)
    for (int x = 0; x < 100; x += 9) EXPECT_EQ(captioned.at(x, y), picture.at(x, y));
  EXPECT_TRUE(has_ink(captioned, 0, 80, 100, captioned.height, {255, 255, 255}));
  // Centred: ink on both halves of the strip, none at the far edges.
  EXPECT_TRUE(has_ink(captioned, 0, 80, 50, captioned.height, {255, 255, 255}));
  EXPECT_TRUE(has_ink(captioned, 50, 80, 100, captioned.height, {255, 255, 255}));
  EXPECT_FALSE(has_ink(captioned, 0, 80, 10, captioned.height, {255, 255, 255}));
  EXPECT_FALSE(has_ink(captioned, 90, 80, 100, captioned.height, {255, 255, 255}));
}

// ---------------------------------------------------------------- GIF

std::size_t count_of(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + 1))
    ++n;
  return n;
}

TEST_F(ImageFiles, GifRoundTripKeepsFlatColoursExactly) {
  const std::vector<Rgb> colors = {{255, 0, 0}, {0, 128, 255}, {17, 201, 99}};
  std::vector<Image> frames;
  for (Rgb c : colors) frames.emplace_back(40, 30, c);
  const fs::path p = dir_ / "flat.gif";
  kiln::write_gif(p, frames, 120, 0);
  EXPECT_EQ(entries(), std::vector<std::string>{"flat.gif"});

  const std::vector<Image> back = kiln::read_gif(p);
  ASSERT_EQ(back.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(back[i].width, 40);
    ASSERT_EQ(back[i].height, 30);
    EXPECT_EQ(back[i].pixels, frames[i].pixels) << "frame " << i;
  }

  const std::string bytes = read_bytes(p);
  EXPECT_EQ(bytes.substr(0, 6), "GIF89a");
  // NETSCAPE2.0 loop block: sub-block size 3, id 1, loop count 0 (forever).
  EXPECT_NE(bytes.find(std::string("NETSCAPE2.0\x03\x01\x00\x00", 15)), std::string::npos);
  // One graphics control extension per frame with a 12 cs (120 ms) delay.
  // Flags 0x04: disposal "do not dispose", no transparency.
  EXPECT_EQ(count_of(bytes, std::string("\x21\xF9\x04\x04\x0C\x00", 6)), 3u);
}

TEST_F(ImageFiles, GifQuantizesGradientsClosely) {
  std::vector<Image> frames = {Image(64, 48, {250, 250, 250}), Image(64, 48, {0, 0, 0}),
                               Image(64, 48, {5, 80, 160})};
  Image ramp(64, 48);
  for (int y = 0; y < 48; ++y)
    for (int x = 0; x < 64; ++x)
      ramp.set(x, y,
               {static_cast<std::uint8_t>(x * 4), static_cast<std::uint8_t>(y * 5),
                static_cast<std::uint8_t>(255 - x * 2 - y)});
  frames.push_back(ramp);  // 3072 colours: more than one palette holds
  const fs::path p = dir_ / "ramp.gif";
  kiln::write_gif(p, frames, 500, 3);

  const std::vector<Image> back = kiln::read_gif(p);
  ASSERT_EQ(back.size(), 4u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(back[i].pixels, frames[i].pixels) << "frame " << i;
  ASSERT_EQ(back[3].width, 64);
  ASSERT_EQ(back[3].height, 48);
  int worst = 0;
  double total = 0;
  for (int y = 0; y < 48; ++y)
    for (int x = 0; x < 64; ++x) {
      const int d = max_channel_difference(back[3].at(x, y), ramp.at(x, y));
      worst = std::max(worst, d);
      total += d;
    }
  // 3072 colours of a 2-D ramp in 256 entries: each entry covers a patch about 15 levels across,
  // so errors of a few levels are the floor; a broken quantiser is off by tens.
  EXPECT_LE(worst, 12);
  EXPECT_LE(total / (64 * 48), 6.0);

  const std::string bytes = read_bytes(p);
  EXPECT_NE(bytes.find(std::string("NETSCAPE2.0\x03\x01\x03\x00", 15)), std::string::npos);  // 3 loops
  EXPECT_EQ(count_of(bytes, std::string("\x21\xF9\x04\x04\x32\x00", 6)), 4u);                // 50 cs
}

TEST_F(ImageFiles, GifErrorsNameTheFile) {
  const fs::path p = dir_ / "bad.gif";
  auto message = error_of([&] { kiln::write_gif(p, {Image(8, 8), Image(8, 9)}); });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find(p.string()), std::string::npos) << *message;
  EXPECT_NE(message->find("8x9"), std::string::npos) << *message;
  EXPECT_TRUE(error_of([&] { kiln::write_gif(p, {}); }).has_value());
  EXPECT_TRUE(entries().empty());

  std::ofstream(p) << "GIF? no.";
  message = error_of([&] { kiln::read_gif(p); });
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find(p.string()), std::string::npos) << *message;
}

}  // namespace

TEST(ScaleNearest, RepeatsEveryPixel) {
  kiln::Image image(2, 1);
  image.set(0, 0, {10, 20, 30});
  image.set(1, 0, {200, 100, 0});
  const auto big = kiln::scale_nearest(image, 3);
  ASSERT_EQ(big.width, 6);
  ASSERT_EQ(big.height, 3);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 6; ++x) EXPECT_EQ(big.at(x, y), image.at(x / 3, 0)) << x << "," << y;
  EXPECT_EQ(kiln::scale_nearest(image, 1).pixels, image.pixels);
  EXPECT_THROW(kiln::scale_nearest(image, 0), kiln::Error);
}
