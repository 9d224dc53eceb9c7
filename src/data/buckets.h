// Aspect-ratio buckets as kohya's sd-scripts makes them: every training picture is resized and
// cropped to one of a fixed set of sizes of about resolution^2 pixels, so batches share a shape
// without squashing portraits or landscapes into squares.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "image/image.h"

namespace kiln {

struct BucketOptions {
  int resolution = 512;  // buckets hold at most resolution^2 pixels
  int min_size = 256;    // smallest side
  int max_size = 1024;   // largest side
  int step = 64;         // every side is a multiple of this
};

// (width, height) pairs, sorted by width then height, no duplicates: exactly the list of
// sd-scripts' make_bucket_resolutions (the square bucket plus, for each width from min_size to
// max_size, the tallest multiple of step that fits the area, and its transpose).
// Throws kiln::Error on non-positive options.
std::vector<std::pair<int, int>> make_buckets(const BucketOptions& options);

// The bucket whose width/height ratio is nearest the image's. On a tie the first in `buckets`
// order wins (as sd-scripts' argmin does), so with make_buckets' order the narrower one.
// Throws kiln::Error when `buckets` is empty or the image size is not positive.
std::pair<int, int> choose_bucket(int image_width, int image_height,
                                  const std::vector<std::pair<int, int>>& buckets);

enum class CropMode { Center, Random };

// Scales the image to just cover the bucket (area resampling when shrinking, Lanczos when
// enlarging), then crops it to the bucket size. Random crops draw their offsets from
// std::mt19937_64(seed) as gen() % (range + 1), x first then y, so a seed gives the same crop on
// every platform. Throws kiln::Error on an empty image or bucket.
Image resize_and_crop(const Image& image, std::pair<int, int> bucket, CropMode mode, std::uint64_t seed);

// Mirror image (left and right swapped), the usual augmentation for subjects without handedness.
Image flip_horizontal(const Image& image);

}  // namespace kiln
