// Decoding goes through an in-memory buffer so the file is read once, and the cheap header sniff
// for alpha avoids decoding PNG/WebP files twice (once with alpha, once with orientation).
#include "data/image_file.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <optional>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "image/png.h"
#include "util/error.h"

namespace kiln {

namespace {

constexpr const char* kNotAnImage = "not a readable image (JPEG, PNG, WebP, BMP, TIFF)";

std::vector<std::uint8_t> read_bytes(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw_file_error(path, "no such file; " + std::string(kNotAnImage));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error(path, "cannot open the file; " + std::string(kNotAnImage));
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw_file_error(path, "read error; " + std::string(kNotAnImage));
  return bytes;
}

std::uint32_t big_endian_32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

std::uint32_t little_endian_32(const std::uint8_t* p) {
  return (std::uint32_t{p[3]} << 24) | (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[1]} << 8) | p[0];
}

struct StatedSize {
  std::uint64_t width = 0, height = 0;
};

// TIFF (TIFF 6.0 specification, section 2): the first image file directory's ImageWidth (256) and
// ImageLength (257) entries, SHORT or LONG, in the file's byte order.
std::optional<StatedSize> tiff_stated_size(const std::vector<std::uint8_t>& b) {
  const bool little = b[0] == 'I';
  const auto u16 = [&](std::size_t at) {
    return little ? static_cast<std::uint32_t>(b[at] | b[at + 1] << 8) : static_cast<std::uint32_t>(b[at] << 8 | b[at + 1]);
  };
  const auto u32 = [&](std::size_t at) { return little ? little_endian_32(&b[at]) : big_endian_32(&b[at]); };
  const std::size_t ifd = u32(4);
  if (ifd + 2 > b.size()) return std::nullopt;
  StatedSize size;
  for (std::uint32_t i = 0, count = u16(ifd); i < count && ifd + 2 + 12 * (i + 1) <= b.size(); ++i) {
    const std::size_t entry = ifd + 2 + 12 * i;
    const std::uint32_t tag = u16(entry), type = u16(entry + 2);
    const std::uint64_t value = type == 3 ? u16(entry + 8) : type == 4 ? u32(entry + 8) : 0;
    if (tag == 256) size.width = value;
    if (tag == 257) size.height = value;
  }
  if (size.width == 0 || size.height == 0) return std::nullopt;
  return size;
}

// The width and height a file's header states, read without decoding (PNG IHDR, JPEG start of frame,
// WebP VP8/VP8L/VP8X, BMP, TIFF): a few kilobytes can claim a picture whose pixels need gigabytes, and the
// decoder would allocate them before finding out. Unknown formats give nothing (OpenCV's own limit
// then applies).
std::optional<StatedSize> stated_size(const std::vector<std::uint8_t>& b) {
  const auto n = b.size();
  if (n >= 24 && b[0] == 0x89 && b[1] == 'P' && b[2] == 'N' && b[3] == 'G')
    return StatedSize{big_endian_32(&b[16]), big_endian_32(&b[20])};
  if (n >= 4 && b[0] == 0xFF && b[1] == 0xD8) {
    std::size_t pos = 2;
    while (pos + 4 <= n) {
      if (b[pos] != 0xFF) return std::nullopt;
      const std::uint8_t marker = b[pos + 1];
      if (marker == 0xFF) {  // fill byte
        ++pos;
        continue;
      }
      const std::size_t length = (std::size_t{b[pos + 2]} << 8) | b[pos + 3];
      const bool start_of_frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
                                  marker != 0xCC;
      if (start_of_frame && pos + 9 <= n)
        return StatedSize{(std::uint64_t{b[pos + 7]} << 8) | b[pos + 8], (std::uint64_t{b[pos + 5]} << 8) | b[pos + 6]};
      if (length < 2) return std::nullopt;
      pos += 2 + length;
    }
    return std::nullopt;
  }
  if (n >= 30 && std::memcmp(&b[0], "RIFF", 4) == 0 && std::memcmp(&b[8], "WEBP", 4) == 0) {
    if (std::memcmp(&b[12], "VP8X", 4) == 0)
      return StatedSize{(little_endian_32(&b[24]) & 0xFFFFFF) + 1, (little_endian_32(&b[27]) & 0xFFFFFF) + 1};
    if (std::memcmp(&b[12], "VP8L", 4) == 0) {
      const std::uint32_t bits = little_endian_32(&b[21]);
      return StatedSize{(bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1};
    }
    if (std::memcmp(&b[12], "VP8 ", 4) == 0)
      return StatedSize{(std::uint64_t{b[27]} << 8 | b[26]) & 0x3FFF, (std::uint64_t{b[29]} << 8 | b[28]) & 0x3FFF};
    return std::nullopt;
  }
  if (n >= 26 && b[0] == 'B' && b[1] == 'M') {
    const auto height = static_cast<std::int32_t>(little_endian_32(&b[22]));
    return StatedSize{little_endian_32(&b[18]),
                      static_cast<std::uint64_t>(height < 0 ? -static_cast<std::int64_t>(height) : height)};
  }
  if (n >= 8 && ((b[0] == 'I' && b[1] == 'I') || (b[0] == 'M' && b[1] == 'M'))) return tiff_stated_size(b);
  return std::nullopt;
}

// WebP: the extended format states alpha in its flags; lossless (VP8L) has an alpha-is-used bit;
// simple lossy (VP8) has no alpha.
bool webp_has_alpha(const std::vector<std::uint8_t>& b) {
  if (b.size() < 30 || std::memcmp(&b[0], "RIFF", 4) != 0 || std::memcmp(&b[8], "WEBP", 4) != 0) return false;
  if (std::memcmp(&b[12], "VP8X", 4) == 0) return (b[20] & 0x10) != 0;
  if (std::memcmp(&b[12], "VP8L", 4) == 0) return (b[24] & 0x10) != 0;  // bit 28 of the header word
  return false;
}

bool is_png(const std::vector<std::uint8_t>& b) {
  static constexpr std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return b.size() >= 8 && std::memcmp(b.data(), kSignature, 8) == 0;
}

bool is_tiff(const std::vector<std::uint8_t>& b) {
  return b.size() >= 4 && ((b[0] == 'I' && b[1] == 'I' && b[2] == 42 && b[3] == 0) ||
                           (b[0] == 'M' && b[1] == 'M' && b[2] == 0 && b[3] == 42));
}

// Alpha over white, rounding to nearest; also takes 16-bit samples (and 0-1 floats) down to 8 bits.
cv::Mat flatten_alpha(const cv::Mat& decoded) {
  cv::Mat eight_bit = decoded;
  if (decoded.depth() == CV_16U) decoded.convertTo(eight_bit, CV_8U, 1.0 / 257.0);
  if (decoded.depth() == CV_32F || decoded.depth() == CV_64F) decoded.convertTo(eight_bit, CV_8U, 255.0);
  if (eight_bit.depth() != CV_8U) return {};  // signed samples: no picture kiln can read as one
  cv::Mat bgra;
  if (eight_bit.channels() == 4)
    bgra = eight_bit;
  else if (eight_bit.channels() == 2) {
    std::vector<cv::Mat> grey_alpha;
    cv::split(eight_bit, grey_alpha);
    cv::merge(std::vector<cv::Mat>{grey_alpha[0], grey_alpha[0], grey_alpha[0], grey_alpha[1]}, bgra);
  } else if (eight_bit.channels() == 3)
    return eight_bit;
  else {
    cv::Mat bgr;
    cv::cvtColor(eight_bit, bgr, cv::COLOR_GRAY2BGR);
    return bgr;
  }
  cv::Mat bgr(bgra.rows, bgra.cols, CV_8UC3);
  for (int y = 0; y < bgra.rows; ++y) {
    const std::uint8_t* in = bgra.ptr<std::uint8_t>(y);
    std::uint8_t* out = bgr.ptr<std::uint8_t>(y);
    for (int x = 0; x < bgra.cols; ++x, in += 4, out += 3) {
      const unsigned a = in[3];
      for (int c = 0; c < 3; ++c)
        out[c] = static_cast<std::uint8_t>((in[c] * a + 255u * (255u - a) + 127u) / 255u);
    }
  }
  return bgr;
}

}  // namespace

Image load_image(const std::filesystem::path& path) {
  const std::vector<std::uint8_t> bytes = read_bytes(path);
  if (bytes.empty()) throw_file_error(path, "empty file; " + std::string(kNotAnImage));
  if (const auto size = stated_size(bytes); size && size->width * size->height > kMaxImagePixels)
    throw_file_error(path, fmt::format("states {}x{} pixels, more than the {} megapixels kiln decodes (a "
                                       "decompression bomb, or a picture to downscale first)",
                                       size->width, size->height, kMaxImagePixels / 1000000));
  if (is_png(bytes)) {
    // Through kiln's libpng reader, whose warning handler is silent: photo-editor PNGs often carry
    // an sRGB profile libpng calls "known incorrect", and OpenCV's decoder prints that on stderr.
    try {
      return read_png(path);
    } catch (const Error&) {
      throw_file_error(path, kNotAnImage);
    }
  }
  cv::Mat bgr;
  try {
    const cv::Mat buffer(1, static_cast<int>(bytes.size()), CV_8U, const_cast<std::uint8_t*>(bytes.data()));
    // Scanners and cameras write 16-bit, float, grey and RGBA TIFFs: like WebPs with alpha, decoded
    // as stored and then flattened to 8-bit RGB.
    if (is_tiff(bytes) || webp_has_alpha(bytes)) {
      const cv::Mat decoded = cv::imdecode(buffer, cv::IMREAD_UNCHANGED);
      if (!decoded.empty()) bgr = flatten_alpha(decoded);
    } else {
      bgr = cv::imdecode(buffer, cv::IMREAD_COLOR);
    }
  } catch (const cv::Exception&) {
    throw_file_error(path, kNotAnImage);
  }
  if (bgr.empty() || bgr.cols <= 0 || bgr.rows <= 0) throw_file_error(path, kNotAnImage);

  Image image(bgr.cols, bgr.rows);
  // cvtColor writes straight into the Image's pixels: the destination already has the right size.
  cv::Mat rgb(image.height, image.width, CV_8UC3, image.pixels.data());
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return image;
}

bool is_image_file(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp" || ext == ".bmp" || ext == ".tif" ||
         ext == ".tiff";
}

}  // namespace kiln
