// The "look" of a set of pictures, model-agnostic and torch-free: how their colours are spread
// (a joint RGB histogram) and what their texture is like (histograms of gradient orientation and
// of gradient strength). A fine-tune's training set has a look; when pictures of prompts that never
// asked for it move towards that look, the style is bleeding (the FollowFox burn sign).
#pragma once
#include <array>
#include <vector>

#include "image/image.h"

namespace kiln {

struct LookDescriptor {
  static constexpr int kColourBins = 4;  // per channel: 64 joint bins
  static constexpr int kOrientationBins = 8;
  static constexpr int kStrengthBins = 8;
  // Each histogram sums to 1 (or is all zero: no gradient at all for the texture ones).
  std::array<double, kColourBins * kColourBins * kColourBins> colour{};
  std::array<double, kOrientationBins> orientation{};  // gradient angle mod π, weighted by strength
  std::array<double, kStrengthBins> strength{};        // gradient magnitude, doubling bin edges
};

// Throws kiln::Error for an empty picture or one whose pixels do not match its size.
LookDescriptor describe_look(const Image& image);

// The mean descriptor of a set of pictures (of any sizes); throws kiln::Error for an empty set.
LookDescriptor mean_look(const std::vector<Image>& images);

// In [0, 1]: the mean of the three histograms' total-variation distances (half their L1 distance).
// 0 for the same look; 1 when no bin of any histogram overlaps.
double look_distance(const LookDescriptor& a, const LookDescriptor& b);

// How much of the target's own look the pictures gained since the base model's: per histogram, the
// bins the target holds more of than the base, w = max(0, target − base), and what the pictures
// added there, Σ w·max(0, now − base) / Σ w²; the mean over the histograms that have such bins.
// 0 = nothing of the target's look gained (also for pictures that changed in any other way: a
// colour cast, a blur, a different subject), 1 = all of it, between = the share (half the pictures
// striped like the training set: 0.5). Never negative; 0 when the base already has the look.
// A distance to the target would not do: a burn that washes every picture out moves them away from
// the training look as a whole even while its stripes appear in them.
double look_gain_towards(const LookDescriptor& now, const LookDescriptor& base, const LookDescriptor& target);

}  // namespace kiln
