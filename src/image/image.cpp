// Pixel access and the two blits the grid and caption code need; everything clips so callers can
// place cells and text near edges without computing intersections themselves.
#include "image/image.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "util/error.h"

namespace kiln {

namespace {

std::string size_text(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

}  // namespace

Image::Image(int width, int height, Rgb fill) : width(width), height(height) {
  if (width < 0 || height < 0) throw Error("Image: negative size " + size_text(width, height));
  pixels.resize(static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3);
  for (std::size_t i = 0; i < pixels.size(); i += 3) {
    pixels[i] = fill.r;
    pixels[i + 1] = fill.g;
    pixels[i + 2] = fill.b;
  }
}

Rgb Image::at(int x, int y) const {
  if (x < 0 || y < 0 || x >= width || y >= height)
    throw Error("Image::at: pixel (" + std::to_string(x) + ", " + std::to_string(y) + ") outside a " +
                size_text(width, height) + " image");
  const std::size_t i = (static_cast<std::size_t>(y) * width + x) * 3;
  return {pixels[i], pixels[i + 1], pixels[i + 2]};
}

void Image::set(int x, int y, Rgb color) {
  if (x < 0 || y < 0 || x >= width || y >= height)
    throw Error("Image::set: pixel (" + std::to_string(x) + ", " + std::to_string(y) + ") outside a " +
                size_text(width, height) + " image");
  const std::size_t i = (static_cast<std::size_t>(y) * width + x) * 3;
  pixels[i] = color.r;
  pixels[i + 1] = color.g;
  pixels[i + 2] = color.b;
}

void Image::paste(const Image& src, int x, int y) {
  const int x0 = std::max(x, 0), x1 = std::min(x + src.width, width);
  const int y0 = std::max(y, 0), y1 = std::min(y + src.height, height);
  if (x0 >= x1 || y0 >= y1) return;
  const std::size_t row_bytes = static_cast<std::size_t>(x1 - x0) * 3;
  for (int row = y0; row < y1; ++row) {
    const std::uint8_t* from = &src.pixels[(static_cast<std::size_t>(row - y) * src.width + (x0 - x)) * 3];
    std::uint8_t* to = &pixels[(static_cast<std::size_t>(row) * width + x0) * 3];
    std::memcpy(to, from, row_bytes);
  }
}

void Image::fill_rect(int x, int y, int w, int h, Rgb color) {
  const int x0 = std::max(x, 0), x1 = std::min(x + w, width);
  const int y0 = std::max(y, 0), y1 = std::min(y + h, height);
  for (int row = y0; row < y1; ++row) {
    std::uint8_t* p = &pixels[(static_cast<std::size_t>(row) * width + x0) * 3];
    for (int col = x0; col < x1; ++col, p += 3) {
      p[0] = color.r;
      p[1] = color.g;
      p[2] = color.b;
    }
  }
}

Image scale_nearest(const Image& image, int factor) {
  if (factor < 1) throw Error("scale_nearest: factor " + std::to_string(factor) + " below 1");
  Image out(image.width * factor, image.height * factor);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) out.set(x, y, image.at(x / factor, y / factor));
  return out;
}

}  // namespace kiln
