#include "lab/look.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "util/error.h"

namespace kiln {

namespace {

void check(const Image& image) {
  if (image.empty() || image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3)
    throw Error("describe_look: an empty image or one whose pixels do not match its size");
}

double luminance(const Image& image, int x, int y) {
  x = std::clamp(x, 0, image.width - 1);
  y = std::clamp(y, 0, image.height - 1);
  const Rgb c = image.at(x, y);
  return (0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b) / 255.0;
}

template <size_t N>
void normalise(std::array<double, N>& histogram) {
  double total = 0;
  for (const double v : histogram) total += v;
  if (total > 0)
    for (double& v : histogram) v /= total;
}

template <size_t N>
double total_variation(const std::array<double, N>& a, const std::array<double, N>& b) {
  double sum = 0;
  for (size_t i = 0; i < N; ++i) sum += std::abs(a[i] - b[i]);
  return sum / 2;
}

// Bin of a gradient magnitude (of luminance in [0, 1], central differences): edges double from
// 1/128, so flat regions, soft shading, edges and hard edges fall in different bins.
int strength_bin(double magnitude) {
  int bin = 0;
  for (double edge = 1.0 / 128; bin < LookDescriptor::kStrengthBins - 1 && magnitude >= edge; edge *= 2) ++bin;
  return bin;
}

}  // namespace

LookDescriptor describe_look(const Image& image) {
  check(image);
  LookDescriptor d;
  constexpr int bins = LookDescriptor::kColourBins;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      const Rgb c = image.at(x, y);
      const int r = c.r * bins / 256, g = c.g * bins / 256, b = c.b * bins / 256;
      d.colour[(r * bins + g) * bins + b] += 1;
      // Sobel-free central differences: enough to tell stripes, grain and flat areas apart.
      const double gx = (luminance(image, x + 1, y) - luminance(image, x - 1, y)) / 2;
      const double gy = (luminance(image, x, y + 1) - luminance(image, x, y - 1)) / 2;
      const double magnitude = std::hypot(gx, gy);
      d.strength[strength_bin(magnitude)] += 1;
      if (magnitude > 0) {
        double angle = std::atan2(gy, gx);
        if (angle < 0) angle += std::numbers::pi;  // orientation, not direction
        const int o = std::min(LookDescriptor::kOrientationBins - 1,
                               static_cast<int>(angle / std::numbers::pi * LookDescriptor::kOrientationBins));
        d.orientation[o] += magnitude;
      }
    }
  }
  normalise(d.colour);
  normalise(d.orientation);
  normalise(d.strength);
  return d;
}

LookDescriptor mean_look(const std::vector<Image>& images) {
  if (images.empty()) throw Error("mean_look: no pictures");
  LookDescriptor mean;
  for (const auto& image : images) {
    const LookDescriptor d = describe_look(image);
    for (size_t i = 0; i < mean.colour.size(); ++i) mean.colour[i] += d.colour[i] / images.size();
    for (size_t i = 0; i < mean.orientation.size(); ++i) mean.orientation[i] += d.orientation[i] / images.size();
    for (size_t i = 0; i < mean.strength.size(); ++i) mean.strength[i] += d.strength[i] / images.size();
  }
  return mean;
}

double look_distance(const LookDescriptor& a, const LookDescriptor& b) {
  return (total_variation(a.colour, b.colour) + total_variation(a.orientation, b.orientation) +
          total_variation(a.strength, b.strength)) /
         3;
}

double look_gain_towards(const LookDescriptor& now, const LookDescriptor& base, const LookDescriptor& target) {
  double total = 0;
  int histograms = 0;
  const auto add = [&](const auto& n, const auto& b, const auto& t) {
    double gained = 0, whole = 0;
    for (size_t k = 0; k < t.size(); ++k) {
      const double w = std::max(0.0, t[k] - b[k]);
      gained += w * std::max(0.0, n[k] - b[k]);
      whole += w * w;
    }
    if (whole < 1e-12) return;  // the base already has this part of the look
    total += gained / whole;
    ++histograms;
  };
  add(now.colour, base.colour, target.colour);
  add(now.orientation, base.orientation, target.orientation);
  add(now.strength, base.strength, target.strength);
  return histograms ? total / histograms : 0.0;
}

}  // namespace kiln
