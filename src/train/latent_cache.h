// VAE latents of training images, computed once and kept on disk: the VAE is the most expensive
// part of a step that never changes during fine-tuning. Each entry is keyed by the image file
// (path, size, modification time), its bucket, crop and flip, and a fingerprint of the VAE
// weights, so a changed image, bucket or VAE never reads a stale latent.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "models/vae.h"
#include "train/training_data.h"

namespace kiln {

// A fingerprint of the weights (names, shapes and sums of every tensor): cheap, and any update
// of the VAE changes it.
std::string vae_fingerprint(AutoencoderKL& vae);

// The picture as the VAE sees it: loaded, resized and cropped to its bucket, optionally flipped,
// as [1, 3, H, W] in [-1, 1].
torch::Tensor training_pixels(const TrainingItem& item, bool flip, bool random_crop, uint64_t crop_seed);

class LatentCache {
 public:
  // `dir` empty: nothing is written to disk (latents are still kept in memory for the run).
  LatentCache(std::filesystem::path dir, AutoencoderKL vae, bool random_crop, uint64_t seed);
  // The latent distribution (unscaled mean and logvar, [1, 4, h, w] each).
  DiagonalGaussian get(const TrainingItem& item, bool flip);
  int64_t encoded() const { return encoded_; }  // VAE runs this session (not read from disk)

 private:
  std::filesystem::path dir_;
  AutoencoderKL vae_;
  bool random_crop_;
  uint64_t seed_;
  std::string vae_key_;
  std::map<std::string, DiagonalGaussian> memory_;
  int64_t encoded_ = 0;
};

}  // namespace kiln
