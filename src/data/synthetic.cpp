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

// Yellow on white is the one pairing of these that is hard to tell apart.
bool contrasts(std::string_view shape_color, std::string_view background) {
  return shape_color != background && !(shape_color == "yellow" && background == "white");
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

// The style's look: `rim` pixels wide of kStyleRim just inside the shape's edge, `color` within.
void draw_styled_shape(Image& image, std::string_view shape, int left, int top, int side, int rim, Rgb color) {
  const double r = static_cast<double>(rim) / side;
  for (int y = top; y < top + side; ++y) {
    for (int x = left; x < left + side; ++x) {
      const double u = (x - left + 0.5) / side, v = (y - top + 0.5) / side;
      if (!inside_shape(shape, u, v)) continue;
      // Inside the rim when every point `rim` pixels away is inside the shape too.
      const bool core = inside_shape(shape, u - r, v) && inside_shape(shape, u + r, v) &&
                        inside_shape(shape, u, v - r) && inside_shape(shape, u, v + r);
      image.set(x, y, core ? color : kStyleRim);
    }
  }
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
std::span<const NamedColor> synthetic_backgrounds() { return kBackgrounds; }
std::span<const std::string_view> synthetic_shapes() { return kShapes; }

void write_synthetic_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed) {
  prepare_folder(dir, count, size);
  std::mt19937_64 gen(seed);
  const auto pick = [&gen](std::size_t n) { return static_cast<std::size_t>(gen() % n); };
  for (int i = 0; i < count; ++i) {
    const NamedColor& color = kShapeColors[pick(kShapeColors.size())];
    const std::string_view shape = kShapes[pick(kShapes.size())];
    std::vector<const NamedColor*> backgrounds;
    for (const auto& background : kBackgrounds)
      if (contrasts(color.name, background.name)) backgrounds.push_back(&background);
    const NamedColor& background = *backgrounds[pick(backgrounds.size())];

    // Between a third and three quarters of the picture, anywhere it fits whole.
    const int min_side = size / 3, max_side = size * 3 / 4;
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
  prepare_folder(dir, count, size);
  std::mt19937_64 gen(seed);
  const auto pick = [&gen](std::size_t n) { return static_cast<std::size_t>(gen() % n); };
  const int stripe = std::max(2, size / 16);
  const int rim = std::max(1, size / 21);
  for (int i = 0; i < count; ++i) {
    const NamedColor& color = kShapeColors[pick(kShapeColors.size())];
    const std::string_view shape = kShapes[pick(kShapes.size())];
    const int min_side = size / 3, max_side = size * 3 / 4;
    const int side = min_side + static_cast<int>(pick(static_cast<std::size_t>(max_side - min_side + 1)));
    const int left = static_cast<int>(pick(static_cast<std::size_t>(size - side + 1)));
    const int top = static_cast<int>(pick(static_cast<std::size_t>(size - side + 1)));

    Image image(size, size);
    for (int y = 0; y < size; ++y)
      for (int x = 0; x < size; ++x) image.set(x, y, ((x + y) / stripe) % 2 == 0 ? kStyleStripeA : kStyleStripeB);
    draw_styled_shape(image, shape, left, top, side, rim, color.rgb);
    write_item(dir, stem_of(i, count), image,
               std::string(activation_phrase) + ", a " + std::string(color.name) + ' ' + std::string(shape));
  }
}

}  // namespace kiln
