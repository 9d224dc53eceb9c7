// Animated GIFs through giflib: one frame per image, looping, each frame with its own palette.
#pragma once
#include <filesystem>
#include <vector>

#include "image/image.h"

namespace kiln {

// All frames must have the same size. `delay_ms` is rounded to GIF's 10 ms units; loop_count 0
// loops forever (NETSCAPE2.0 extension). Written atomically; kiln::Error names the file on failure.
void write_gif(const std::filesystem::path& path, const std::vector<Image>& frames, int delay_ms = 800,
               int loop_count = 0);

// Decodes every frame (for tests and for reusing a GIF): frames as full RGB images.
std::vector<Image> read_gif(const std::filesystem::path& path);

}  // namespace kiln
