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

struct NamedColor {
  std::string_view name;
  Rgb rgb;
};

constexpr std::array<NamedColor, 6> kShapeColors{{{"red", {220, 30, 30}},
                                                  {"green", {30, 170, 50}},
                                                  {"blue", {30, 60, 220}},
                                                  {"yellow", {240, 220, 30}},
                                                  {"black", {0, 0, 0}},
                                                  {"white", {255, 255, 255}}}};
constexpr std::array<NamedColor, 3> kBackgrounds{
    {{"white", {255, 255, 255}}, {"black", {0, 0, 0}}, {"grey", {128, 128, 128}}}};
constexpr std::array<std::string_view, 3> kShapes{"circle", "square", "triangle"};

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
      bool inside = true;
      if (shape == "circle") {
        inside = (u - 0.5) * (u - 0.5) + (v - 0.5) * (v - 0.5) <= 0.25;
      } else if (shape == "triangle") {
        // Apex at the top middle, base along the bottom edge.
        inside = v >= 2.0 * std::abs(u - 0.5);
      }
      if (inside) image.set(x, y, color);
    }
  }
}

}  // namespace

void write_synthetic_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed) {
  if (count < 0) throw_file_error(dir, "synthetic dataset: negative count " + std::to_string(count));
  if (size < 16) throw_file_error(dir, "synthetic dataset: size " + std::to_string(size) + " below 16");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw_file_error(dir, "cannot create the folder: " + ec.message());

  std::mt19937_64 gen(seed);
  const auto pick = [&gen](std::size_t n) { return static_cast<std::size_t>(gen() % n); };
  const int digits = std::max<int>(4, static_cast<int>(std::to_string(count > 0 ? count - 1 : 0).size()));
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

    std::string stem = std::to_string(i);
    stem.insert(0, static_cast<std::size_t>(digits) - stem.size(), '0');
    write_png(dir / (stem + ".png"), image);
    const std::filesystem::path caption_path = dir / (stem + ".txt");
    std::ofstream caption(caption_path, std::ios::binary | std::ios::trunc);
    caption << "a " << color.name << ' ' << shape << ", " << background.name << " background\n";
    if (!caption.flush()) throw_file_error(caption_path, "cannot write the caption");
  }
}

}  // namespace kiln
