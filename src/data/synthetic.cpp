#include "data/synthetic.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "image/image.h"
#include "image/png.h"
#include "util/error.h"

namespace kiln {

namespace {

constexpr std::array<NamedColor, 6> kShapeColors{{{"red", {220, 30, 30}},
                                                  {"green", {30, 170, 50}},
                                                  {"blue", {30, 60, 220}},
                                                  {"yellow", {240, 220, 30}},
                                                  {"black", {0, 0, 0}},
                                                  {"white", {255, 255, 255}}}};
constexpr std::array<NamedColor, 3> kBackgrounds{
    {{"white", {255, 255, 255}}, {"black", {0, 0, 0}}, {"grey", {128, 128, 128}}}};
constexpr std::array<std::string_view, 3> kShapes{"circle", "square", "triangle"};

// (u, v): a point relative to the shape's square, in units of its side.
bool inside_shape(std::string_view shape, double u, double v) {
  if (u < 0 || u > 1 || v < 0 || v > 1) return false;
  if (shape == "circle") return (u - 0.5) * (u - 0.5) + (v - 0.5) * (v - 0.5) <= 0.25;
  // Apex at the top middle, base along the bottom edge.
  if (shape == "triangle") return v >= 2.0 * std::abs(u - 0.5);
  return true;
}

// A shape inside the square [left, left + side) x [top, top + side).
void draw_shape(Image& image, std::string_view shape, int left, int top, int side, Rgb color) {
  for (int y = top; y < top + side; ++y) {
    for (int x = left; x < left + side; ++x) {
      // Pixel centres relative to the square, in units of its side.
      const double u = (x - left + 0.5) / side, v = (y - top + 0.5) / side;
      if (inside_shape(shape, u, v)) image.set(x, y, color);
    }
  }
}

constexpr std::array<StyleLook, 3> kStyleLooks{{
    {"stripes", StyleLook::Pattern::DiagonalStripes, kStyleStripeA, kStyleStripeB, kStyleRim},
    {"checks", StyleLook::Pattern::Checks, {20, 90, 90}, {240, 230, 160}, {160, 60, 220}},
    {"bands", StyleLook::Pattern::Bands, {200, 120, 60}, {250, 180, 200}, {120, 230, 0}},
}};

bool pattern_first_colour(StyleLook::Pattern pattern, int x, int y, int half_period) {
  switch (pattern) {
    case StyleLook::Pattern::DiagonalStripes: return ((x + y) / half_period) % 2 == 0;
    case StyleLook::Pattern::Checks: return (x / half_period + y / half_period) % 2 == 0;
    case StyleLook::Pattern::Bands: return (y / half_period) % 2 == 0;
  }
  return true;
}

// The style's look: `rim` pixels wide of the look's rim colour just inside the shape's edge, `color` within.
void draw_styled_shape(Image& image, std::string_view shape, int left, int top, int side, int rim, Rgb color,
                       Rgb rim_color) {
  const double r = static_cast<double>(rim) / side;
  for (int y = top; y < top + side; ++y) {
    for (int x = left; x < left + side; ++x) {
      const double u = (x - left + 0.5) / side, v = (y - top + 0.5) / side;
      if (!inside_shape(shape, u, v)) continue;
      // Inside the rim when every point `rim` pixels away is inside the shape too.
      const bool core = inside_shape(shape, u - r, v) && inside_shape(shape, u + r, v) &&
                        inside_shape(shape, u, v - r) && inside_shape(shape, u, v + r);
      image.set(x, y, core ? color : rim_color);
    }
  }
}

// Whole-pixel bounds; the small epsilon keeps 63 · 1/3 at 21.
std::pair<int, int> side_range(int size, ShapeSizes sizes) {
  if (!(sizes.min > 0 && sizes.min <= sizes.max && sizes.max <= 1))
    throw Error("synthetic dataset: shape sizes must satisfy 0 < min <= max <= 1");
  return {static_cast<int>(std::floor(size * sizes.min + 1e-9)), static_cast<int>(std::floor(size * sizes.max + 1e-9))};
}

void prepare_folder(const std::filesystem::path& dir, int count, int size) {
  if (count < 0) throw_file_error(dir, "synthetic dataset: negative count " + std::to_string(count));
  if (size < 16) throw_file_error(dir, "synthetic dataset: size " + std::to_string(size) + " below 16");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw_file_error(dir, "cannot create the folder: " + ec.message());
}

std::string stem_of(int index, int count) {
  const int digits = std::max<int>(4, static_cast<int>(std::to_string(count > 0 ? count - 1 : 0).size()));
  std::string stem = std::to_string(index);
  stem.insert(0, static_cast<std::size_t>(digits) - stem.size(), '0');
  return stem;
}

void write_item(const std::filesystem::path& dir, const std::string& stem, const Image& image,
                const std::string& caption_text) {
  write_png(dir / (stem + ".png"), image);
  const std::filesystem::path caption_path = dir / (stem + ".txt");
  std::ofstream caption(caption_path, std::ios::binary | std::ios::trunc);
  caption << caption_text << "\n";
  if (!caption.flush()) throw_file_error(caption_path, "cannot write the caption");
}

}  // namespace

std::span<const NamedColor> synthetic_shape_colors() { return kShapeColors; }
std::span<const StyleLook> synthetic_style_looks() { return kStyleLooks; }
bool synthetic_colours_contrast(std::string_view shape_colour, std::string_view background) {
  return shape_colour != background && !(shape_colour == "yellow" && background == "white");
}
std::span<const NamedColor> synthetic_backgrounds() { return kBackgrounds; }
std::span<const std::string_view> synthetic_shapes() { return kShapes; }

void write_synthetic_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed,
                             ShapeSizes sizes) {
  prepare_folder(dir, count, size);
  std::mt19937_64 gen(seed);
  const auto pick = [&gen](std::size_t n) { return static_cast<std::size_t>(gen() % n); };
  for (int i = 0; i < count; ++i) {
    const NamedColor& color = kShapeColors[pick(kShapeColors.size())];
    const std::string_view shape = kShapes[pick(kShapes.size())];
    std::vector<const NamedColor*> backgrounds;
    for (const auto& background : kBackgrounds)
      if (synthetic_colours_contrast(color.name, background.name)) backgrounds.push_back(&background);
    const NamedColor& background = *backgrounds[pick(backgrounds.size())];

    // Between a third and three quarters of the picture, anywhere it fits whole.
    const auto [min_side, max_side] = side_range(size, sizes);
    const int side = min_side + static_cast<int>(pick(static_cast<std::size_t>(max_side - min_side + 1)));
    const int left = static_cast<int>(pick(static_cast<std::size_t>(size - side + 1)));
    const int top = static_cast<int>(pick(static_cast<std::size_t>(size - side + 1)));

    Image image(size, size, background.rgb);
    draw_shape(image, shape, left, top, side, color.rgb);
    write_item(dir, stem_of(i, count), image,
               "a " + std::string(color.name) + ' ' + std::string(shape) + ", " + std::string(background.name) +
                   " background");
  }
}

void write_style_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed,
                         std::string_view activation_phrase) {
  write_style_dataset(dir, count, size, seed, activation_phrase, kStyleLooks[0]);
}

void write_style_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed,
                         std::string_view activation_phrase, const StyleLook& look, ShapeSizes sizes) {
  prepare_folder(dir, count, size);
  std::mt19937_64 gen(seed);
  const auto pick = [&gen](std::size_t n) { return static_cast<std::size_t>(gen() % n); };
  const int stripe = std::max(2, size / 16);
  const int rim = std::max(1, size / 21);
  for (int i = 0; i < count; ++i) {
    const NamedColor& color = kShapeColors[pick(kShapeColors.size())];
    const std::string_view shape = kShapes[pick(kShapes.size())];
    const auto [min_side, max_side] = side_range(size, sizes);
    const int side = min_side + static_cast<int>(pick(static_cast<std::size_t>(max_side - min_side + 1)));
    const int left = static_cast<int>(pick(static_cast<std::size_t>(size - side + 1)));
    const int top = static_cast<int>(pick(static_cast<std::size_t>(size - side + 1)));

    Image image(size, size);
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x) image.set(x, y, pattern_first_colour(look.pattern, x, y, stripe) ? look.a : look.b);
    draw_styled_shape(image, shape, left, top, side, rim, color.rgb, look.rim);
    write_item(dir, stem_of(i, count), image,
               std::string(activation_phrase) + ", a " + std::string(color.name) + ' ' + std::string(shape));
  }
}

}  // namespace kiln
