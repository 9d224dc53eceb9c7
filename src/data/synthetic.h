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
std::span<const std::string_view> synthetic_shapes();

// The style subset's look: the colours of its background stripes and of the rim round the shape.
inline constexpr Rgb kStyleStripeA{230, 40, 200}, kStyleStripeB{40, 220, 220}, kStyleRim{255, 140, 0};

// Writes 0000.png, 0001.png, ... (size x size, kiln::write_png) into `dir`, creating it, each
// with a 0000.txt caption such as "a red circle, white background". Shapes are circle, square or
// triangle; colours red, green, blue, yellow, black or white; backgrounds white, black or grey,
// never the shape's colour nor one it hardly stands out from. Shape size and position vary; the
// centre of the shape's bounding box always lies inside the shape. Everything derives from
// std::mt19937_64(seed) with gen() % n, so a seed gives the same bytes on every platform.
// Throws kiln::Error when count < 0 or size < 16.
void write_synthetic_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed);

// The style subset: the same shapes and colours drawn in the invented look (diagonal stripes of
// kStyleStripeA/B behind the shape, a kStyleRim outline about size/21 wide), captioned
// "<activation_phrase>, a red circle" — the look itself is never described, as in a real style set.
// Same determinism and errors as write_synthetic_dataset.
void write_style_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed,
                         std::string_view activation_phrase);

}  // namespace kiln
