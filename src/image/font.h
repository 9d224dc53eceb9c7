// Text rendering for grid labels with stb_truetype and a TrueType font from a Debian package
// (fonts-dejavu-core); anti-aliased, UTF-8, one line at a time.
#pragma once
#include <filesystem>
#include <memory>
#include <string_view>
#include <vector>

#include "image/image.h"

namespace kiln {

class Font {
 public:
  // A .ttf file; throws kiln::Error naming the file when it is missing or not a font.
  static Font load(const std::filesystem::path& ttf);
  // DejaVu Sans from fonts-dejavu-core (/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf), or the
  // file named by the KILN_FONT environment variable; the error says which package to install.
  static Font load_default();

  Font(Font&&) noexcept;
  Font& operator=(Font&&) noexcept;
  ~Font();

  // Width in pixels of `utf8` drawn at `pixel_height` (the font's ascent-to-descent height).
  int text_width(std::string_view utf8, int pixel_height) const;
  // Draws one line with its top-left at (x, y), alpha-blended over the image, clipped at its edges.
  void draw(Image& image, int x, int y, std::string_view utf8, int pixel_height, Rgb color) const;
  // Splits `utf8` at spaces into lines no wider than `max_width` (a word longer than that is cut).
  std::vector<std::string> wrap(std::string_view utf8, int pixel_height, int max_width) const;

 private:
  struct Impl;
  explicit Font(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
