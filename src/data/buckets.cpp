#include "data/buckets.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <string>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "util/error.h"

namespace kiln {

std::vector<std::pair<int, int>> make_buckets(const BucketOptions& options) {
  if (options.resolution <= 0 || options.min_size <= 0 || options.max_size <= 0 || options.step <= 0)
    throw Error("bucket options: resolution, min_size, max_size and step must be positive");
  // Integer arithmetic mirrors the Python: floor divisions on non-negative ints.
  const long long max_area = static_cast<long long>(options.resolution) * options.resolution;
  const long long step = options.step;
  std::set<std::pair<int, int>> buckets;
  const long long square = static_cast<long long>(std::floor(std::sqrt(static_cast<double>(max_area)) /
                                                             static_cast<double>(step))) *
                           step;
  buckets.emplace(static_cast<int>(square), static_cast<int>(square));
  for (long long width = options.min_size; width <= options.max_size; width += step) {
    const long long height = std::min<long long>(options.max_size, (max_area / width) / step * step);
    if (height >= options.min_size) {
      buckets.emplace(static_cast<int>(width), static_cast<int>(height));
      buckets.emplace(static_cast<int>(height), static_cast<int>(width));
    }
  }
  return {buckets.begin(), buckets.end()};
}

std::pair<int, int> choose_bucket(int image_width, int image_height,
                                  const std::vector<std::pair<int, int>>& buckets) {
  if (buckets.empty()) throw Error("choose_bucket: no buckets");
  if (image_width <= 0 || image_height <= 0)
    throw Error("choose_bucket: image size " + std::to_string(image_width) + "x" +
                std::to_string(image_height));
  const double ratio = static_cast<double>(image_width) / image_height;
  std::pair<int, int> best = buckets.front();
  double best_error = std::numeric_limits<double>::infinity();
  for (const auto& bucket : buckets) {
    const double error = std::abs(static_cast<double>(bucket.first) / bucket.second - ratio);
    if (error < best_error) {
      best_error = error;
      best = bucket;
    }
  }
  return best;
}

Image resize_and_crop(const Image& image, std::pair<int, int> bucket, CropMode mode, std::uint64_t seed) {
  const auto [bucket_width, bucket_height] = bucket;
  if (image.empty()) throw Error("resize_and_crop: empty image");
  if (bucket_width <= 0 || bucket_height <= 0)
    throw Error("resize_and_crop: bucket " + std::to_string(bucket_width) + "x" +
                std::to_string(bucket_height));

  const double scale = std::max(static_cast<double>(bucket_width) / image.width,
                                static_cast<double>(bucket_height) / image.height);
  // Rounding may land a pixel short of the bucket on the fitted side; never crop beyond the edge.
  const int scaled_width = std::max(bucket_width, static_cast<int>(std::lround(image.width * scale)));
  const int scaled_height = std::max(bucket_height, static_cast<int>(std::lround(image.height * scale)));

  // cv::Mat has no const-data constructor; the source is only read.
  const cv::Mat source(image.height, image.width, CV_8UC3, const_cast<std::uint8_t*>(image.pixels.data()));
  cv::Mat scaled = source;
  if (scaled_width != image.width || scaled_height != image.height)
    cv::resize(source, scaled, cv::Size(scaled_width, scaled_height), 0, 0,
               scale < 1.0 ? cv::INTER_AREA : cv::INTER_LANCZOS4);

  const int range_x = scaled_width - bucket_width;
  const int range_y = scaled_height - bucket_height;
  int left = range_x / 2;
  int top = range_y / 2;
  if (mode == CropMode::Random) {
    // Not std::uniform_int_distribution: its output differs between standard libraries.
    std::mt19937_64 gen(seed);
    left = static_cast<int>(gen() % (static_cast<std::uint64_t>(range_x) + 1));
    top = static_cast<int>(gen() % (static_cast<std::uint64_t>(range_y) + 1));
  }

  Image out(bucket_width, bucket_height);
  const std::size_t row_bytes = static_cast<std::size_t>(bucket_width) * 3;
  for (int y = 0; y < bucket_height; ++y)
    std::memcpy(out.pixels.data() + y * row_bytes, scaled.ptr<std::uint8_t>(top + y) + left * 3, row_bytes);
  return out;
}

Image flip_horizontal(const Image& image) {
  Image out(image.width, image.height);
  for (int y = 0; y < image.height; ++y) {
    const std::uint8_t* in = image.pixels.data() + static_cast<std::size_t>(y) * image.width * 3;
    std::uint8_t* row = out.pixels.data() + static_cast<std::size_t>(y) * image.width * 3;
    for (int x = 0; x < image.width; ++x) std::memcpy(row + x * 3, in + (image.width - 1 - x) * 3, 3);
  }
  return out;
}

}  // namespace kiln
