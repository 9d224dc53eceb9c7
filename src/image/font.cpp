// Label text with stb_truetype (Debian's libstb carries the implementation, so it is only
// declared here). Pen positions stay fractional and glyphs are rasterised at their sub-pixel
// offset, so kerned text looks the same wherever it starts.
#include "image/font.h"

#include <stb_truetype.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

constexpr char kDefaultFont[] = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

// Decodes UTF-8; malformed bytes (overlong forms, surrogates, truncated sequences) become U+FFFD
// so a bad label still renders instead of failing a whole grid.
std::vector<char32_t> decode_utf8(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int extra = 0;
    char32_t cp = 0, min = 0;
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    } else if ((b0 & 0xE0) == 0xC0) {
      extra = 1, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      extra = 2, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      extra = 3, cp = b0 & 0x07, min = 0x10000;
    } else {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    for (; j <= i + extra && j < s.size(); ++j) {
      const auto b = static_cast<unsigned char>(s[j]);
      if ((b & 0xC0) != 0x80) break;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (j != i + 1 + extra || cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      out.push_back(0xFFFD);
      i = std::max(j, i + 1);
      continue;
    }
    out.push_back(cp);
    i = j;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string encode_utf8(const std::vector<char32_t>& cps, std::size_t begin, std::size_t end) {
  std::string out;
  for (std::size_t i = begin; i < end; ++i) append_utf8(out, cps[i]);
  return out;
}

std::vector<std::string_view> split(std::string_view s, char separator) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t pos = s.find(separator, start);
    parts.push_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) return parts;
    start = pos + 1;
  }
}

}  // namespace

struct Font::Impl {
  std::vector<unsigned char> data;  // stbtt_fontinfo points into this buffer
  stbtt_fontinfo info{};
  int ascent = 0, descent = 0;  // font units

  float scale(int pixel_height) const {
    return stbtt_ScaleForPixelHeight(&info, static_cast<float>(pixel_height));
  }

  // One positioned glyph of a laid-out line.
  struct Placed {
    int glyph;
    float x;  // pen position in pixels from the line start
  };

  // Pen positions with kerning; control characters take no space. Returns the final pen position.
  float layout(const std::vector<char32_t>& cps, float scale, std::vector<Placed>& out) const {
    float pen = 0;
    int previous = 0;
    for (char32_t cp : cps) {
      if (cp < 0x20 || cp == 0x7F) continue;
      const int glyph = stbtt_FindGlyphIndex(&info, static_cast<int>(cp));
      if (previous) pen += scale * static_cast<float>(stbtt_GetGlyphKernAdvance(&info, previous, glyph));
      out.push_back({glyph, pen});
      int advance = 0, left_bearing = 0;
      stbtt_GetGlyphHMetrics(&info, glyph, &advance, &left_bearing);
      pen += scale * static_cast<float>(advance);
      previous = glyph;
    }
    return pen;
  }

  // The advance width, widened where the last glyphs' ink overhangs it (italic tails, 'f').
  int width(const std::vector<char32_t>& cps, int pixel_height) const {
    if (pixel_height <= 0) return 0;
    const float s = scale(pixel_height);
    std::vector<Placed> placed;
    float right = layout(cps, s, placed);
    for (const Placed& p : placed) {
      const float shift = p.x - std::floor(p.x);
      int x0, y0, x1, y1;
      stbtt_GetGlyphBitmapBoxSubpixel(&info, p.glyph, s, s, shift, 0, &x0, &y0, &x1, &y1);
      if (x1 > x0) right = std::max(right, std::floor(p.x) + static_cast<float>(x1));
    }
    return static_cast<int>(std::ceil(right - 1e-3f));
  }
};

Font::Font(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Font::Font(Font&&) noexcept = default;
Font& Font::operator=(Font&&) noexcept = default;
Font::~Font() = default;

Font Font::load(const fs::path& ttf) {
  std::ifstream in(ttf, std::ios::binary);
  if (!in) throw_file_error(ttf, "cannot open font file");
  auto impl = std::make_unique<Impl>();
  impl->data.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) throw_file_error(ttf, "cannot read font file");
  // stb_truetype trusts the tables it is given; at least make sure this is a font container.
  if (impl->data.size() < 12 || stbtt_GetFontOffsetForIndex(impl->data.data(), 0) < 0)
    throw_file_error(ttf, "not a TrueType/OpenType font");
  const int offset = stbtt_GetFontOffsetForIndex(impl->data.data(), 0);
  if (!stbtt_InitFont(&impl->info, impl->data.data(), offset))
    throw_file_error(ttf, "not a usable TrueType/OpenType font");
  int line_gap = 0;
  stbtt_GetFontVMetrics(&impl->info, &impl->ascent, &impl->descent, &line_gap);
  if (impl->ascent - impl->descent <= 0) throw_file_error(ttf, "font has no vertical metrics");
  return Font(std::move(impl));
}

Font Font::load_default() {
  const char* env = std::getenv("KILN_FONT");
  const fs::path path = env && *env ? fs::path(env) : fs::path(kDefaultFont);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw_file_error(path, "font not found (install fonts-dejavu-core or set KILN_FONT to a .ttf file)");
  return load(path);
}

int Font::text_width(std::string_view utf8, int pixel_height) const {
  return impl_->width(decode_utf8(utf8), pixel_height);
}

void Font::draw(Image& image, int x, int y, std::string_view utf8, int pixel_height, Rgb color) const {
  if (pixel_height <= 0 || image.empty()) return;
  const float s = impl_->scale(pixel_height);
  const int baseline = y + static_cast<int>(std::lround(s * static_cast<float>(impl_->ascent)));
  std::vector<Impl::Placed> placed;
  impl_->layout(decode_utf8(utf8), s, placed);
  std::vector<unsigned char> coverage;
  for (const Impl::Placed& p : placed) {
    const float whole = std::floor(p.x);
    const float shift = p.x - whole;
    int x0, y0, x1, y1;
    stbtt_GetGlyphBitmapBoxSubpixel(&impl_->info, p.glyph, s, s, shift, 0, &x0, &y0, &x1, &y1);
    const int w = x1 - x0, h = y1 - y0;
    if (w <= 0 || h <= 0) continue;  // spaces
    coverage.assign(static_cast<std::size_t>(w) * h, 0);
    stbtt_MakeGlyphBitmapSubpixel(&impl_->info, coverage.data(), w, h, w, s, s, shift, 0, p.glyph);
    const int left = x + static_cast<int>(whole) + x0, top = baseline + y0;
    for (int row = std::max(0, -top); row < h && top + row < image.height; ++row) {
      for (int col = std::max(0, -left); col < w && left + col < image.width; ++col) {
        const unsigned a = coverage[static_cast<std::size_t>(row) * w + col];
        if (a == 0) continue;
        std::uint8_t* px =
            &image.pixels[(static_cast<std::size_t>(top + row) * image.width + left + col) * 3];
        const std::uint8_t c[3] = {color.r, color.g, color.b};
        for (int k = 0; k < 3; ++k)
          px[k] = static_cast<std::uint8_t>((c[k] * a + px[k] * (255u - a) + 127u) / 255u);
      }
    }
  }
}

std::vector<std::string> Font::wrap(std::string_view utf8, int pixel_height, int max_width) const {
  std::vector<std::string> lines;
  if (utf8.empty()) return lines;
  max_width = std::max(max_width, 1);
  auto fits = [&](const std::string& s) { return text_width(s, pixel_height) <= max_width; };
  // Explicit newlines are kept as line breaks; each paragraph is wrapped greedily.
  for (std::string_view paragraph : split(utf8, '\n')) {
    std::string line;
    bool emitted = false;
    for (std::string_view word_view : split(paragraph, ' ')) {
      if (word_view.empty()) continue;  // runs of spaces collapse
      std::string word(word_view);
      std::string candidate = line.empty() ? word : line + " " + word;
      if (fits(candidate)) {
        line = std::move(candidate);
        continue;
      }
      if (!line.empty()) {
        lines.push_back(std::move(line));
        emitted = true;
        line.clear();
      }
      if (fits(word)) {
        line = std::move(word);
        continue;
      }
      // A word wider than the whole line: cut it into the longest pieces that fit (at least one
      // character each, so a tiny max_width still terminates).
      const std::vector<char32_t> cps = decode_utf8(word);
      std::size_t begin = 0;
      while (begin < cps.size()) {
        std::size_t end = begin + 1;
        while (end < cps.size() && fits(encode_utf8(cps, begin, end + 1))) ++end;
        std::string piece = encode_utf8(cps, begin, end);
        if (end < cps.size()) {
          lines.push_back(std::move(piece));
          emitted = true;
        } else {
          line = std::move(piece);
        }
        begin = end;
      }
    }
    if (!line.empty() || !emitted) lines.push_back(std::move(line));
  }
  return lines;
}

}  // namespace kiln
