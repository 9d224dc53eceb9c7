// Statistics behind the burnt-fine-tune diagnostics. Variances use two passes rather than one so that
// flat images give exactly 0 instead of cancellation noise, and the tests can assert exact values.
#include "lab/image_stats.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "util/error.h"

namespace kiln {

namespace {

std::string size_text(const Image& image) {
  return std::to_string(image.width) + "x" + std::to_string(image.height);
}

std::size_t pixel_count(const Image& image) {
  return static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height);
}

void require_valid(const Image& image, const char* what) {
  if (image.width <= 0 || image.height <= 0)
    throw Error(std::string(what) + ": empty image (" + size_text(image) + ")");
  if (image.pixels.size() != pixel_count(image) * 3)
    throw Error(std::string(what) + ": pixel buffer of " + std::to_string(image.pixels.size()) +
                " bytes does not match a " + size_text(image) + " RGB image");
}

// Integer weights over one common denominator keep white at exactly 1.0 (0.2126 + 0.7152 + 0.0722
// summed in doubles is not), which lets the tests check contrast values exactly.
std::vector<double> luminance(const Image& image) {
  std::vector<double> y(pixel_count(image));
  for (std::size_t i = 0; i < y.size(); ++i) {
    const std::uint8_t* p = &image.pixels[i * 3];
    const long weighted = 2126L * p[0] + 7152L * p[1] + 722L * p[2];
    y[i] = static_cast<double>(weighted) / (10000.0 * 255.0);
  }
  return y;
}

struct Moments {
  double mean = 0;
  double variance = 0;
};

// Working relative to the first value makes a constant input give exactly 0 variance: summing n
// copies of an inexact value and dividing by n does not round-trip, but n zeros do.
Moments moments(const std::vector<double>& v) {
  const double origin = v.front();
  double shifted_mean = 0;
  for (double x : v) shifted_mean += x - origin;
  shifted_mean /= static_cast<double>(v.size());
  Moments m;
  m.mean = origin + shifted_mean;
  for (double x : v) m.variance += (x - origin - shifted_mean) * (x - origin - shifted_mean);
  m.variance /= static_cast<double>(v.size());
  return m;
}

}  // namespace

double mean_saturation(const Image& image) {
  require_valid(image, "mean_saturation");
  const std::size_t n = pixel_count(image);
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* p = &image.pixels[i * 3];
    const int hi = std::max({p[0], p[1], p[2]});
    const int lo = std::min({p[0], p[1], p[2]});
    if (hi > 0) sum += static_cast<double>(hi - lo) / hi;
  }
  return sum / static_cast<double>(n);
}

double rms_contrast(const Image& image) {
  require_valid(image, "rms_contrast");
  return std::sqrt(moments(luminance(image)).variance);
}

double colourfulness(const Image& image) {
  require_valid(image, "colourfulness");
  const std::size_t n = pixel_count(image);
  std::vector<double> rg(n), yb(n);
  for (std::size_t i = 0; i < n; ++i) {
    const double r = image.pixels[i * 3], g = image.pixels[i * 3 + 1], b = image.pixels[i * 3 + 2];
    rg[i] = r - g;
    yb[i] = 0.5 * (r + g) - b;
  }
  const Moments m_rg = moments(rg), m_yb = moments(yb);
  return std::sqrt(m_rg.variance + m_yb.variance) +
         0.3 * std::sqrt(m_rg.mean * m_rg.mean + m_yb.mean * m_yb.mean);
}

double high_frequency_energy(const Image& image) {
  require_valid(image, "high_frequency_energy");
  const std::vector<double> y = luminance(image);
  const double variance = moments(y).variance;
  if (variance < 1e-12) return 0.0;
  const int w = image.width, h = image.height;
  const auto at = [&](int x, int row) {
    x = std::clamp(x, 0, w - 1);
    row = std::clamp(row, 0, h - 1);
    return y[static_cast<std::size_t>(row) * w + x];
  };
  double energy = 0;
  for (int row = 0; row < h; ++row) {
    for (int x = 0; x < w; ++x) {
      const double lap = 4.0 * at(x, row) - at(x - 1, row) - at(x + 1, row) - at(x, row - 1) - at(x, row + 1);
      energy += lap * lap;
    }
  }
  energy /= static_cast<double>(y.size());
  // The replicated-border Laplacian is symmetric with eigenvalues in [0, 8] and annihilates
  // constants, so the ratio cannot exceed 1; the clamp only absorbs rounding.
  return std::min(1.0, energy / (64.0 * variance));
}

double rms_difference(const Image& a, const Image& b) {
  require_valid(a, "rms_difference");
  require_valid(b, "rms_difference");
  if (a.width != b.width || a.height != b.height)
    throw Error("rms_difference: images differ in size (" + size_text(a) + " and " + size_text(b) + ")");
  // Integer squared differences are exact; scaling once at the end avoids per-value rounding.
  std::uint64_t sum_sq = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i) {
    const int d = int{a.pixels[i]} - int{b.pixels[i]};
    sum_sq += static_cast<std::uint64_t>(d * d);
  }
  return std::sqrt(static_cast<double>(sum_sq) / static_cast<double>(a.pixels.size())) / 255.0;
}

double seed_diversity(const std::vector<Image>& images) {
  if (images.size() < 2)
    throw Error("seed_diversity: needs at least 2 images, got " + std::to_string(images.size()));
  double total = 0;
  std::size_t pairs = 0;
  for (std::size_t a = 0; a < images.size(); ++a) {
    for (std::size_t b = a + 1; b < images.size(); ++b) {
      total += rms_difference(images[a], images[b]);
      ++pairs;
    }
  }
  return total / static_cast<double>(pairs);
}

ImageStats image_stats(const Image& image) {
  return {mean_saturation(image), rms_contrast(image), colourfulness(image), high_frequency_energy(image)};
}

}  // namespace kiln
