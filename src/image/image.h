// An 8-bit RGB picture in memory: what samplers' outputs become before they are saved, labelled or
// assembled into grids. Torch-free so the image code builds and tests without libtorch.
#pragma once
#include <cstdint>
#include <vector>

namespace kiln {

struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  // row-major, 3 bytes (R, G, B) per pixel, no row padding

  Image() = default;
  Image(int width, int height, Rgb fill = {});

  bool empty() const { return width == 0 || height == 0; }
  Rgb at(int x, int y) const;
  void set(int x, int y, Rgb color);
  // Copies `src` with its top-left corner at (x, y); parts outside this image are clipped.
  void paste(const Image& src, int x, int y);
  void fill_rect(int x, int y, int w, int h, Rgb color);
};

// Each pixel repeated factor x factor times (factor >= 1): tiny models' pictures made visible in
// grids without blurring what is being judged.
Image scale_nearest(const Image& image, int factor);

}  // namespace kiln
