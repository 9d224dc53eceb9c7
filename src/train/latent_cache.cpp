#include "train/latent_cache.h"

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>

#include "data/buckets.h"
#include "data/image_file.h"
#include "io/safetensors.h"
#include "models/device.h"
#include "train/run_seeds.h"
#include "util/error.h"
#include "util/sha256.h"

namespace kiln {

namespace fs = std::filesystem;

std::string vae_fingerprint(AutoencoderKL& vae) {
  torch::NoGradGuard no_grad;
  std::string text;
  for (const auto& item : vae->named_parameters()) {
    const auto t = item.value().to(torch::kFloat64);
    text += fmt::format("{} {} {:.17g} {:.17g}\n", item.key(), fmt::join(t.sizes(), "x"),
                        t.sum().item<double>(), t.abs().sum().item<double>());
  }
  return sha256_bytes(text);
}

torch::Tensor training_pixels(const TrainingItem& item, bool flip, bool random_crop, uint64_t crop_seed) {
  auto image = resize_and_crop(load_image(item.image), item.bucket,
                               random_crop ? CropMode::Random : CropMode::Center, crop_seed);
  if (flip) image = flip_horizontal(image);
  auto bytes = torch::empty({image.height, image.width, 3}, torch::kUInt8);
  std::memcpy(bytes.data_ptr<uint8_t>(), image.pixels.data(), image.pixels.size());
  return bytes.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32).div(127.5).sub(1.0);
}

LatentCache::LatentCache(fs::path dir, AutoencoderKL vae, bool random_crop, uint64_t seed)
    : dir_(std::move(dir)), vae_(std::move(vae)), random_crop_(random_crop), seed_(seed) {
  vae_key_ = vae_fingerprint(vae_);
  if (!dir_.empty()) fs::create_directories(dir_);
}

DiagonalGaussian LatentCache::get(const TrainingItem& item, bool flip) {
  // A random crop is drawn once per picture (from the run seed), so cached latents stay valid.
  const uint64_t crop_seed = derive_seed(seed_, RandomStream::Crop, static_cast<uint64_t>(item.image_index));
  std::error_code ec;
  const auto size = fs::file_size(item.image, ec);
  const auto mtime = fs::last_write_time(item.image, ec).time_since_epoch().count();
  const auto key =
      sha256_bytes(fmt::format("{}\n{}\n{}\n{}x{}\n{}\n{}\n{}", fs::absolute(item.image).string(), size,
                               mtime, item.bucket.first, item.bucket.second, random_crop_ ? crop_seed : 0,
                               flip ? 1 : 0, vae_key_))
          .substr(0, 32);
  if (auto it = memory_.find(key); it != memory_.end()) return it->second;
  const auto file = dir_.empty() ? fs::path() : dir_ / (key + ".safetensors");
  DiagonalGaussian latent;
  if (!file.empty() && fs::exists(file)) {
    const auto stored = SafeTensorsFile::open(file);
    latent.mean = stored.tensor("mean").clone();
    latent.logvar = stored.tensor("logvar").clone();
  } else {
    torch::NoGradGuard no_grad;
    // Encoded where the VAE is; the cache itself stays in CPU memory, off the GPU.
    latent = vae_->encode(training_pixels(item, flip, random_crop_, crop_seed).to(module_device(*vae_), module_dtype(*vae_)));
    latent.mean = latent.mean.to(torch::kCPU, torch::kFloat32);
    latent.logvar = latent.logvar.to(torch::kCPU, torch::kFloat32);
    ++encoded_;
    if (!file.empty()) save_safetensors(file, {{"mean", latent.mean}, {"logvar", latent.logvar}});
  }
  latent.std = (0.5 * latent.logvar).exp();
  memory_[key] = latent;
  return latent;
}

}  // namespace kiln
