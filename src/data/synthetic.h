// A tiny captioned world that can be generated anywhere: one coloured shape per picture, with a
// caption naming exactly what is drawn, so tests and the demo can train without downloading data.
// Beside the plain pictures there is a "style" subset with an invented look (striped magenta/cyan
// background, orange rim around the shape) and an activation phrase, the size of a real style set.
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>

#include "image/image.h"

namespace kiln {

struct NamedColor {
  std::string_view name;
  Rgb rgb;
};

// The world's vocabulary: shape colours, plain backgrounds and shapes, in the order the generator
// draws from them (so a prompt-adherence check can name what it sees in the same words).
std::span<const NamedColor> synthetic_shape_colors();
std::span<const NamedColor> synthetic_backgrounds();
// Whether a shape of this colour is drawn on this background (never its own colour, nor yellow on
// white, the one pairing hard to tell apart).
bool synthetic_colours_contrast(std::string_view shape_colour, std::string_view background);
std::span<const std::string_view> synthetic_shapes();

// The style subset's look: the colours of its background stripes and of the rim round the shape.
inline constexpr Rgb kStyleStripeA{230, 40, 200}, kStyleStripeB{40, 220, 220}, kStyleRim{255, 140, 0};

// An invented look for a style set: a two-colour background pattern and a rim of a colour no
// shape or plain background has. The first is the demo's (kStyleStripeA/B, kStyleRim).
struct StyleLook {
  enum class Pattern { DiagonalStripes, Checks, Bands };
  std::string_view name;
  Pattern pattern;
  Rgb a, b, rim;
};
std::span<const StyleLook> synthetic_style_looks();

// The side of a shape's square, as a fraction of the picture's side: drawn uniformly from
// [min, max] (whole pixels, both ends included).
struct ShapeSizes {
  double min = 1.0 / 3, max = 0.75;
};

// Writes 0000.png, 0001.png, ... (size x size, kiln::write_png) into `dir`, creating it, each
// with a 0000.txt caption such as "a red circle, white background". Shapes are circle, square or
// triangle; colours red, green, blue, yellow, black or white; backgrounds white, black or grey,
// never the shape's colour nor one it hardly stands out from. Shape size and position vary; the
// centre of the shape's bounding box always lies inside the shape. Everything derives from
// std::mt19937_64(seed) with gen() % n, so a seed gives the same bytes on every platform.
// Throws kiln::Error when count < 0 or size < 16.
void write_synthetic_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed,
                             ShapeSizes sizes = {});

// The style subset: the same shapes and colours drawn in the invented look (diagonal stripes of
// kStyleStripeA/B behind the shape, a kStyleRim outline about size/21 wide), captioned
// "<activation_phrase>, a red circle" — the look itself is never described, as in a real style set.
// Same determinism and errors as write_synthetic_dataset.
void write_style_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed,
                         std::string_view activation_phrase);
// The same in another look (the pattern's period is size/8 pixels, as the stripes').
void write_style_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed,
                         std::string_view activation_phrase, const StyleLook& look, ShapeSizes sizes = {});

}  // namespace kiln
