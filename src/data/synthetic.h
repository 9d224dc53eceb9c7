// A tiny captioned dataset that can be generated anywhere: one coloured shape per picture, with a
// caption naming exactly what is drawn, so tests and the demo can train without downloading data.
#pragma once
#include <cstdint>
#include <filesystem>

namespace kiln {

// Writes 0000.png, 0001.png, ... (size x size, kiln::write_png) into `dir`, creating it, each
// with a 0000.txt caption such as "a red circle, white background". Shapes are circle, square or
// triangle; colours red, green, blue, yellow, black or white; backgrounds white, black or grey,
// never the shape's colour nor one it hardly stands out from. Shape size and position vary; the
// centre of the shape's bounding box always lies inside the shape. Everything derives from
// std::mt19937_64(seed) with gen() % n, so a seed gives the same bytes on every platform.
// Throws kiln::Error when count < 0 or size < 16.
void write_synthetic_dataset(const std::filesystem::path& dir, int count, int size, std::uint64_t seed);

}  // namespace kiln
