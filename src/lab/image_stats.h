// Image statistics for diagnosing "burnt" fine-tunes: an over-trained UNet drifts towards
// oversaturated, high-contrast pictures with noisy high-frequency texture, and different seeds of one
// prompt collapse onto near-identical images. Torch-free so the diagnostics build and test anywhere.
//
// All functions throw kiln::Error for an empty image or one whose pixel buffer does not match its
// size, since every statistic would otherwise be a silent 0/0.
#pragma once
#include <vector>

#include "image/image.h"

namespace kiln {

// Mean HSV saturation (max - min) / max over pixels, 0 for black pixels; in [0, 1].
double mean_saturation(const Image& image);

// Population standard deviation of luminance Y = 0.2126 R + 0.7152 G + 0.0722 B, channels scaled to
// [0, 1]; in [0, 0.5].
double rms_contrast(const Image& image);

// Hasler & Süsstrunk (2003) colourfulness on 0-255 values: rg = R - G, yb = (R + G) / 2 - B,
// M = sqrt(σ_rg² + σ_yb²) + 0.3 sqrt(μ_rg² + μ_yb²), population statistics.
double colourfulness(const Image& image);

// Normalised Laplacian energy of luminance Y (as in rms_contrast):
//   mean(L²) / (64 · var(Y)),  L = 4-neighbour Laplacian of Y with replicated borders,
// and 0 when var(Y) < 1e-12 (a constant image has no texture at all). The Laplacian's squared gain
// grows from 0 at DC to 64 at the (π, π) Nyquist corner, so this is a high-pass-weighted fraction of
// the non-DC energy: in [0, 1], near 0 for smooth gradients, near 1 for a 1-pixel checkerboard
// (exactly 1 away from the borders).
double high_frequency_energy(const Image& image);

// RMS difference of two pictures of one size over every channel, scaled to [0, 1]: 0 when equal, 1
// for all-black against all-white. Also how far a fine-tune moved one cell (prompt, seed) of its
// base model's pictures.
double rms_difference(const Image& a, const Image& b);

// Mean over all unordered pairs of the RMS pixel difference (every channel, scaled to [0, 1]); 0 when
// all images are identical, 1 for all-black against all-white. Needs at least 2 images of one size.
double seed_diversity(const std::vector<Image>& same_prompt_different_seeds);

struct ImageStats {
  double saturation = 0;
  double contrast = 0;
  double colourfulness = 0;
  double high_frequency = 0;
};

ImageStats image_stats(const Image& image);

}  // namespace kiln
