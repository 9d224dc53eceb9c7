// Training pictures from disk: any format OpenCV decodes, upright and as 8-bit RGB, so the rest of
// the data pipeline never sees orientation tags, alpha or 16-bit samples.
#pragma once
#include <cstdint>
#include <filesystem>

#include "image/image.h"

namespace kiln {

// JPEG, PNG, WebP, BMP (and whatever else OpenCV reads) as 8-bit RGB. The EXIF orientation of
// photos is applied, so a portrait shot from a phone comes out portrait. Pictures with an alpha
// channel (PNG, WebP) are composited over white; those skip EXIF orientation, which OpenCV only
// applies when it drops alpha (PNG and WebP files practically never carry the tag).
// Throws kiln::Error naming the file when it is missing, not a decodable image, or empty, and when
// its header states more than kMaxImagePixels (checked before the decoder allocates anything).
Image load_image(const std::filesystem::path& path);

// 100 megapixels (10000 x 10000): far beyond any training resolution, far below a decompression
// bomb's claim (a 1 MB PNG can state 20000 x 20000 = 1.2 GB of RGB).
constexpr std::uint64_t kMaxImagePixels = 100'000'000;

// By extension only (.jpg .jpeg .png .webp .bmp .tif .tiff, any case): what a dataset folder scan picks up.
bool is_image_file(const std::filesystem::path& path);

}  // namespace kiln
