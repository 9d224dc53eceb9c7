// Animated GIFs through giflib. Each frame gets its own 256-colour palette: exact when the frame
// has at most 256 colours, otherwise from a variance-driven median cut. giflib's GifQuantizeBuffer
// is not used because it keeps only 5 bits per channel, so even a flat colour comes back changed.
#include "image/gif.h"

#include <gif_lib.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>
#include <string>
#include <unordered_map>

#include "util/atomic_file.h"
#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

struct Palette {
  std::vector<Rgb> colors;            // at most 256
  std::vector<GifPixelType> indices;  // one per pixel
};

// Exact palette when the frame has few colours (flat test frames, text); false if it has more.
bool exact_palette(const Image& image, Palette& out) {
  std::unordered_map<std::uint32_t, GifPixelType> seen;
  const std::size_t n = image.pixels.size() / 3;
  out.indices.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* p = &image.pixels[i * 3];
    const std::uint32_t key = (std::uint32_t{p[0]} << 16) | (std::uint32_t{p[1]} << 8) | p[2];
    auto it = seen.find(key);
    if (it == seen.end()) {
      if (seen.size() == 256) return false;
      it = seen.emplace(key, static_cast<GifPixelType>(out.colors.size())).first;
      out.colors.push_back({p[0], p[1], p[2]});
    }
    out.indices[i] = it->second;
  }
  return true;
}

// Median cut over the frame's distinct colours (weighted by pixel count), so palette entries are
// true averages. The box with the largest squared error is split next, along its widest channel,
// at the pixel-weighted median; each colour then maps to its nearest palette entry.
void median_cut(const Image& image, Palette& out) {
  struct Color {
    std::uint32_t key;  // 0xRRGGBB
    std::uint32_t count;
    std::array<int, 3> rgb;
  };
  const std::size_t n = image.pixels.size() / 3;
  auto key_of = [&](std::size_t i) {
    const std::uint8_t* p = &image.pixels[i * 3];
    return (std::uint32_t{p[0]} << 16) | (std::uint32_t{p[1]} << 8) | p[2];
  };
  std::unordered_map<std::uint32_t, std::uint32_t> counts;
  counts.reserve(std::min<std::size_t>(n, 1 << 18));
  for (std::size_t i = 0; i < n; ++i) ++counts[key_of(i)];
  std::vector<Color> colors;
  colors.reserve(counts.size());
  for (const auto& [key, count] : counts)
    colors.push_back(
        {key,
         count,
         {static_cast<int>(key >> 16), static_cast<int>((key >> 8) & 0xFF), static_cast<int>(key & 0xFF)}});
  // Hash-map order is not portable; sort so the same frame always gives the same palette.
  std::sort(colors.begin(), colors.end(), [](const Color& a, const Color& b) { return a.key < b.key; });

  struct Box {
    std::size_t begin, end;  // range in `colors`
    double error = 0;        // pixel-weighted squared distance to the box mean
    int axis = 0;            // channel with the largest spread
  };
  auto measure = [&](Box& box) {
    double count = 0;
    std::array<double, 3> sum{}, squares{};
    for (std::size_t i = box.begin; i < box.end; ++i) {
      const double w = colors[i].count;
      count += w;
      for (int c = 0; c < 3; ++c) {
        sum[c] += w * colors[i].rgb[c];
        squares[c] += w * colors[i].rgb[c] * colors[i].rgb[c];
      }
    }
    std::array<double, 3> spread{};
    for (int c = 0; c < 3; ++c) spread[c] = squares[c] - sum[c] * sum[c] / count;
    box.error = spread[0] + spread[1] + spread[2];
    box.axis = static_cast<int>(std::max_element(spread.begin(), spread.end()) - spread.begin());
  };

  std::vector<Box> boxes{{0, colors.size()}};
  measure(boxes[0]);
  while (boxes.size() < 256) {
    auto splittable = [](const Box& b) { return b.end - b.begin > 1 ? b.error : -1.0; };
    auto worst = std::max_element(boxes.begin(), boxes.end(),
                                  [&](const Box& a, const Box& b) { return splittable(a) < splittable(b); });
    if (worst->end - worst->begin < 2) break;  // every box holds a single colour
    const Box box = *worst;
    const int axis = box.axis;
    std::sort(colors.begin() + static_cast<std::ptrdiff_t>(box.begin),
              colors.begin() + static_cast<std::ptrdiff_t>(box.end), [axis](const Color& a, const Color& b) {
                return a.rgb[axis] != b.rgb[axis] ? a.rgb[axis] < b.rgb[axis] : a.key < b.key;
              });
    std::uint64_t total = 0;
    for (std::size_t i = box.begin; i < box.end; ++i) total += colors[i].count;
    std::uint64_t running = 0;
    std::size_t split = box.begin + 1;
    for (std::size_t i = box.begin; i + 1 < box.end; ++i) {
      running += colors[i].count;
      split = i + 1;
      if (2 * running >= total) break;
    }
    Box low{box.begin, split}, high{split, box.end};
    measure(low);
    measure(high);
    *worst = low;
    boxes.push_back(high);
  }

  out.colors.clear();
  for (const Box& box : boxes) {
    std::array<std::uint64_t, 3> sum{};
    std::uint64_t count = 0;
    for (std::size_t i = box.begin; i < box.end; ++i) {
      count += colors[i].count;
      for (int c = 0; c < 3; ++c) sum[c] += std::uint64_t{colors[i].count} * colors[i].rgb[c];
    }
    auto mean = [&](int c) { return static_cast<std::uint8_t>((sum[c] + count / 2) / count); };
    out.colors.push_back({mean(0), mean(1), mean(2)});
  }
  // Nearest entry rather than the own box's mean: trims the error for colours at box borders.
  std::unordered_map<std::uint32_t, GifPixelType> nearest;
  nearest.reserve(colors.size());
  for (const Color& color : colors) {
    int best = 1 << 30;
    GifPixelType best_index = 0;
    for (std::size_t k = 0; k < out.colors.size(); ++k) {
      const Rgb& p = out.colors[k];
      const int dr = color.rgb[0] - p.r, dg = color.rgb[1] - p.g, db = color.rgb[2] - p.b;
      const int d = dr * dr + dg * dg + db * db;
      if (d < best) best = d, best_index = static_cast<GifPixelType>(k);
    }
    nearest.emplace(color.key, best_index);
  }
  out.indices.resize(n);
  for (std::size_t i = 0; i < n; ++i) out.indices[i] = nearest[key_of(i)];
}

Palette quantize(const Image& image) {
  Palette palette;
  if (!exact_palette(image, palette)) median_cut(image, palette);
  return palette;
}

// GifErrorString returns null for codes it does not know (and for 0, which some failures leave).
std::string gif_error_text(int code) {
  const char* text = GifErrorString(code);
  return text ? std::string(text) : "giflib error " + std::to_string(code);
}

int write_to_file(GifFileType* gif, const GifByteType* data, int length) {
  return static_cast<int>(
      std::fwrite(data, 1, static_cast<std::size_t>(length), static_cast<std::FILE*>(gif->UserData)));
}

struct MapDeleter {
  void operator()(ColorMapObject* map) const { GifFreeMapObject(map); }
};

// Closes a giflib writer on every path; close() reports the trailer write's result.
class GifWriter {
 public:
  GifWriter(std::FILE* file, const fs::path& path) : path_(path) {
    int error = 0;
    gif_ = EGifOpen(file, write_to_file, &error);
    if (!gif_) throw_file_error(path_, std::string("cannot start GIF: ") + gif_error_text(error));
  }
  ~GifWriter() {
    if (gif_) EGifCloseFile(gif_, nullptr);
  }
  GifWriter(const GifWriter&) = delete;
  GifWriter& operator=(const GifWriter&) = delete;

  GifFileType* get() const { return gif_; }
  void check(int status, const char* what) const {
    if (status == GIF_ERROR)
      throw_file_error(path_, std::string("cannot write GIF ") + what + ": " + gif_error_text(gif_->Error));
  }
  void close() {
    int error = 0;
    GifFileType* gif = gif_;
    gif_ = nullptr;
    if (EGifCloseFile(gif, &error) == GIF_ERROR)
      throw_file_error(path_, std::string("cannot finish GIF: ") + gif_error_text(error));
  }

 private:
  fs::path path_;
  GifFileType* gif_ = nullptr;
};

}  // namespace

void write_gif(const fs::path& path, const std::vector<Image>& frames, int delay_ms, int loop_count) {
  if (frames.empty()) throw_file_error(path, "no frames to write as GIF");
  const int width = frames[0].width, height = frames[0].height;
  if (width <= 0 || height <= 0 || width > 65535 || height > 65535)
    throw_file_error(path, "GIF frames must be 1..65535 pixels wide and high, got " + std::to_string(width) +
                               "x" + std::to_string(height));
  for (std::size_t i = 1; i < frames.size(); ++i)
    if (frames[i].width != width || frames[i].height != height)
      throw_file_error(path, "frame " + std::to_string(i) + " is " + std::to_string(frames[i].width) + "x" +
                                 std::to_string(frames[i].height) + ", frame 0 is " + std::to_string(width) +
                                 "x" + std::to_string(height));
  const int delay_cs = std::clamp((delay_ms + 5) / 10, 0, 65535);
  const int loops = std::clamp(loop_count, 0, 65535);

  write_file_atomically(path, [&](std::FILE* file) {
    GifWriter gif(file, path);
    EGifSetGifVersion(gif.get(), true);  // GIF89a: extensions follow
    gif.check(EGifPutScreenDesc(gif.get(), width, height, 8, 0, nullptr), "screen descriptor");

    // NETSCAPE2.0 application extension: sub-block 1 holds the loop count (0 = forever).
    unsigned char app_id[] = {'N', 'E', 'T', 'S', 'C', 'A', 'P', 'E', '2', '.', '0'};
    unsigned char loop_block[] = {1, static_cast<unsigned char>(loops & 0xFF),
                                  static_cast<unsigned char>(loops >> 8)};
    gif.check(EGifPutExtensionLeader(gif.get(), APPLICATION_EXT_FUNC_CODE), "loop extension");
    gif.check(EGifPutExtensionBlock(gif.get(), sizeof app_id, app_id), "loop extension");
    gif.check(EGifPutExtensionBlock(gif.get(), sizeof loop_block, loop_block), "loop extension");
    gif.check(EGifPutExtensionTrailer(gif.get()), "loop extension");

    for (const Image& frame : frames) {
      GraphicsControlBlock gcb{};
      gcb.DisposalMode = DISPOSE_DO_NOT;
      gcb.UserInputFlag = false;
      gcb.DelayTime = delay_cs;
      gcb.TransparentColor = NO_TRANSPARENT_COLOR;
      GifByteType gce[4];
      const std::size_t gce_length = EGifGCBToExtension(&gcb, gce);
      gif.check(EGifPutExtension(gif.get(), GRAPHICS_EXT_FUNC_CODE, static_cast<int>(gce_length), gce),
                "frame delay");

      Palette palette = quantize(frame);
      // giflib wants a power-of-two table; unused entries stay black.
      int table = 2;
      while (table < static_cast<int>(palette.colors.size())) table *= 2;
      std::vector<GifColorType> colors(table, GifColorType{0, 0, 0});
      for (std::size_t k = 0; k < palette.colors.size(); ++k)
        colors[k] = {palette.colors[k].r, palette.colors[k].g, palette.colors[k].b};
      std::unique_ptr<ColorMapObject, MapDeleter> map(GifMakeMapObject(table, colors.data()));
      if (!map) throw_file_error(path, "cannot allocate a GIF colour map");
      gif.check(EGifPutImageDesc(gif.get(), 0, 0, width, height, false, map.get()), "image descriptor");
      for (int y = 0; y < height; ++y)
        gif.check(EGifPutLine(gif.get(), palette.indices.data() + static_cast<std::size_t>(y) * width, width),
                  "pixels");
    }
    gif.close();
  });
}

std::vector<Image> read_gif(const fs::path& path) {
  int error = 0;
  GifFileType* gif = DGifOpenFileName(path.c_str(), &error);
  if (!gif) throw_file_error(path, std::string("cannot open GIF: ") + gif_error_text(error));
  std::unique_ptr<GifFileType, void (*)(GifFileType*)> guard(
      gif, [](GifFileType* g) { DGifCloseFile(g, nullptr); });
  if (DGifSlurp(gif) == GIF_ERROR)
    throw_file_error(path, std::string("cannot read GIF: ") + gif_error_text(gif->Error));

  Rgb background{0, 0, 0};
  if (gif->SColorMap && gif->SBackGroundColor < gif->SColorMap->ColorCount) {
    const GifColorType& c = gif->SColorMap->Colors[gif->SBackGroundColor];
    background = {c.Red, c.Green, c.Blue};
  }
  Image canvas(gif->SWidth, gif->SHeight, background);
  std::vector<Image> frames;
  for (int i = 0; i < gif->ImageCount; ++i) {
    const SavedImage& image = gif->SavedImages[i];
    const GifImageDesc& desc = image.ImageDesc;
    GraphicsControlBlock gcb{};
    gcb.TransparentColor = NO_TRANSPARENT_COLOR;
    if (DGifSavedExtensionToGCB(gif, i, &gcb) == GIF_ERROR) gcb.TransparentColor = NO_TRANSPARENT_COLOR;
    const ColorMapObject* map = desc.ColorMap ? desc.ColorMap : gif->SColorMap;
    if (!map) throw_file_error(path, "GIF frame " + std::to_string(i) + " has no colour map");
    if (!image.RasterBits) throw_file_error(path, "GIF frame " + std::to_string(i) + " has no pixels");

    const Image before = gcb.DisposalMode == DISPOSE_PREVIOUS ? canvas : Image();
    for (int y = 0; y < desc.Height; ++y) {
      const int cy = desc.Top + y;
      if (cy < 0 || cy >= canvas.height) continue;
      for (int x = 0; x < desc.Width; ++x) {
        const int cx = desc.Left + x;
        if (cx < 0 || cx >= canvas.width) continue;
        const int index = image.RasterBits[static_cast<std::size_t>(y) * desc.Width + x];
        if (index == gcb.TransparentColor || index >= map->ColorCount) continue;
        const GifColorType& c = map->Colors[index];
        canvas.set(cx, cy, {c.Red, c.Green, c.Blue});
      }
    }
    frames.push_back(canvas);
    if (gcb.DisposalMode == DISPOSE_BACKGROUND)
      canvas.fill_rect(desc.Left, desc.Top, desc.Width, desc.Height, background);
    else if (gcb.DisposalMode == DISPOSE_PREVIOUS)
      canvas = before;
  }
  return frames;
}

}  // namespace kiln
