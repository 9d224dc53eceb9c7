// PNG through libpng. libpng reports errors by calling a callback that must not return, so each
// libpng session runs in a small C-style function with its own setjmp: only trivially destructible
// locals live between setjmp and the libpng calls (longjmp must not skip C++ destructors), and
// buffers are owned by the caller. The failure message is turned into kiln::Error afterwards.
#include "image/png.h"

#include <png.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

// Lives in the caller's frame; libpng gets a pointer to it as its error pointer.
struct PngFailure {
  std::jmp_buf jump;
  char message[256] = {};
};

[[noreturn]] void on_png_error(png_structp png, png_const_charp message) {
  auto* failure = static_cast<PngFailure*>(png_get_error_ptr(png));
  std::snprintf(failure->message, sizeof failure->message, "%s", message ? message : "unknown libpng error");
  std::longjmp(failure->jump, 1);
}

// Warnings (odd ICC profiles, unknown chunks) do not make a picture unusable; stay quiet.
void on_png_warning(png_structp, png_const_charp) {}

bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

// tEXt and zTXt hold Latin-1; the API promises UTF-8.
std::string latin1_to_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

bool write_png_stream(std::FILE* file, int width, int height, png_bytep* rows, png_text* texts,
                      int text_count, PngFailure& failure) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &failure, on_png_error, on_png_warning);
  if (!png) {
    std::snprintf(failure.message, sizeof failure.message, "cannot create libpng writer");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    std::snprintf(failure.message, sizeof failure.message, "cannot create libpng info");
    return false;
  }
  if (setjmp(failure.jump)) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8,
               PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (text_count > 0) png_set_text(png, info, texts, text_count);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return true;
}

// What one pass over a PNG file yields; owned by the caller so longjmp never skips its destructor.
struct PngContents {
  int width = 0;
  int height = 0;
  int channels = 0;  // 3 (RGB) or 4 (RGBA) after the transforms
  std::vector<std::uint8_t> data;
  std::vector<png_bytep> rows;
  PngText text;
};

void collect_text(png_structp png, png_infop info, PngText& out) {
  png_textp texts = nullptr;
  int count = 0;
  png_get_text(png, info, &texts, &count);
  for (int i = 0; i < count; ++i) {
    const png_text& t = texts[i];
    const bool utf8 =
        t.compression == PNG_ITXT_COMPRESSION_NONE || t.compression == PNG_ITXT_COMPRESSION_zTXt;
    std::string_view value = t.text ? std::string_view(t.text, utf8 ? t.itxt_length : t.text_length) : "";
    out.emplace_back(latin1_to_utf8(t.key), utf8 ? std::string(value) : latin1_to_utf8(value));
  }
}

bool read_png_stream(std::FILE* file, PngContents& out, PngFailure& failure) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &failure, on_png_error, on_png_warning);
  if (!png) {
    std::snprintf(failure.message, sizeof failure.message, "cannot create libpng reader");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  png_infop end_info = info ? png_create_info_struct(png) : nullptr;
  if (!info || !end_info) {
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    std::snprintf(failure.message, sizeof failure.message, "cannot create libpng info");
    return false;
  }
  if (setjmp(failure.jump)) {
    png_destroy_read_struct(&png, &info, &end_info);
    return false;
  }
  png_init_io(png, file);
  png_set_sig_bytes(png, 8);
  png_read_info(png, info);

  // Everything becomes 8-bit RGB or RGBA; alpha is composited by the caller.
  png_set_expand(png);
  png_set_scale_16(png);
  png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);

  out.width = static_cast<int>(png_get_image_width(png, info));
  out.height = static_cast<int>(png_get_image_height(png, info));
  out.channels = png_get_channels(png, info);
  const std::size_t row_bytes = png_get_rowbytes(png, info);
  if ((out.channels != 3 && out.channels != 4) ||
      row_bytes != static_cast<std::size_t>(out.width) * out.channels)
    png_error(png, "unexpected pixel layout after conversion to 8-bit RGB");
  // Refused here rather than by a bad_alloc that would skip png_destroy_read_struct.
  if (row_bytes * out.height > (std::size_t{1} << 31)) png_error(png, "image too large (over 2 GiB decoded)");
  out.data.resize(row_bytes * out.height);
  out.rows.resize(out.height);
  for (int y = 0; y < out.height; ++y) out.rows[y] = out.data.data() + row_bytes * y;
  png_read_image(png, out.rows.data());
  png_read_end(png, end_info);

  // Chunks before IDAT land in `info`, those after it in `end_info`: together, file order.
  collect_text(png, info, out.text);
  collect_text(png, end_info, out.text);
  png_destroy_read_struct(&png, &info, &end_info);
  return true;
}

PngContents read_png_file(const fs::path& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) throw_file_error(path, std::string("cannot open: ") + std::strerror(errno));
  png_byte signature[8] = {};
  const std::size_t got = std::fread(signature, 1, sizeof signature, file);
  if (got != sizeof signature || png_sig_cmp(signature, 0, sizeof signature) != 0) {
    std::fclose(file);
    throw_file_error(path, "not a PNG file");
  }
  PngContents contents;
  PngFailure failure;
  bool ok = false;
  try {
    ok = read_png_stream(file, contents, failure);
  } catch (...) {  // std::bad_alloc from the row buffers
    std::fclose(file);
    throw;
  }
  std::fclose(file);
  if (!ok) throw_file_error(path, std::string("cannot read PNG: ") + failure.message);
  return contents;
}

}  // namespace

void write_png(const fs::path& path, const Image& image, const PngText& text) {
  if (image.empty()) throw_file_error(path, "cannot write an empty image as PNG");
  if (image.pixels.size() != static_cast<std::size_t>(image.width) * image.height * 3)
    throw_file_error(path, "image buffer does not match its " + std::to_string(image.width) + "x" +
                               std::to_string(image.height) + " size");

  // libpng silently drops chunks with bad keywords; refuse them instead.
  std::vector<png_text> chunks(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto& [key, value] = text[i];
    bool key_ok = !key.empty() && key.size() <= 79 && key.front() != ' ' && key.back() != ' ';
    for (unsigned char c : key) key_ok = key_ok && c >= 0x20 && c < 0x7F;
    if (!key_ok)
      throw_file_error(path, "PNG text keyword \"" + key + "\" must be 1-79 printable ASCII characters");
    png_text& chunk = chunks[i];
    chunk.key = const_cast<char*>(key.c_str());  // libpng copies; it never writes through these
    chunk.text = const_cast<char*>(value.c_str());
    if (is_ascii(value)) {
      chunk.compression = PNG_TEXT_COMPRESSION_NONE;
      chunk.text_length = value.size();
    } else {
      // PIL's PngInfo.add_text does the same, and A1111's PNG-info tab reads it back.
      chunk.compression = PNG_ITXT_COMPRESSION_NONE;
      chunk.itxt_length = value.size();
      chunk.lang = const_cast<char*>("");
      chunk.lang_key = const_cast<char*>("");
    }
  }

  std::vector<png_bytep> rows(image.height);
  const std::size_t row_bytes = static_cast<std::size_t>(image.width) * 3;
  for (int y = 0; y < image.height; ++y)
    rows[y] = const_cast<png_bytep>(image.pixels.data() + row_bytes * y);  // read only while writing

  write_file_atomically(path, [&](std::FILE* file) {
    PngFailure failure;
    if (!write_png_stream(file, image.width, image.height, rows.data(), chunks.data(),
                          static_cast<int>(chunks.size()), failure))
      throw_file_error(path, std::string("cannot write PNG: ") + failure.message);
  });
}

Image read_png(const fs::path& path) {
  PngContents contents = read_png_file(path);
  Image image(contents.width, contents.height);
  const std::size_t n = static_cast<std::size_t>(contents.width) * contents.height;
  const std::uint8_t* src = contents.data.data();
  std::uint8_t* dst = image.pixels.data();
  if (contents.channels == 3) {
    std::memcpy(dst, src, n * 3);
    return image;
  }
  // Over white, because a transparent sample should look like the page it sits on.
  for (std::size_t i = 0; i < n; ++i, src += 4, dst += 3) {
    const unsigned a = src[3];
    for (int c = 0; c < 3; ++c)
      dst[c] = static_cast<std::uint8_t>((src[c] * a + 255u * (255u - a) + 127u) / 255u);
  }
  return image;
}

PngText read_png_text(const fs::path& path) { return read_png_file(path).text; }

}  // namespace kiln
