// PNG files through libpng: 8-bit RGB, with text chunks (AUTOMATIC1111 keeps its generation
// settings in a chunk named "parameters", which its PNG-info tab reads back).
#pragma once
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "image/image.h"

namespace kiln {

using PngText = std::vector<std::pair<std::string, std::string>>;  // keyword -> text, in order

// Written atomically (temporary name, then rename). Text that is pure ASCII goes in a tEXt chunk,
// anything else in an uncompressed iTXt chunk (UTF-8), as PIL does for A1111. Throws kiln::Error
// naming the file on any failure.
void write_png(const std::filesystem::path& path, const Image& image, const PngText& text = {});

// Any PNG libpng reads (palette, grey, 16-bit, alpha) converted to 8-bit RGB, alpha composited
// over white. Throws kiln::Error naming the file when it is not a PNG.
Image read_png(const std::filesystem::path& path);
// The tEXt/zTXt/iTXt chunks of a PNG, in file order, decoded to UTF-8.
PngText read_png_text(const std::filesystem::path& path);

}  // namespace kiln
