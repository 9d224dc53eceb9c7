// Training an SD-shaped autoencoder from scratch: what a demo world needs before a diffusion model
// can be trained in it (a random VAE decodes every latent to noise). Reconstruction MSE plus a
// small KL term, as the LDM autoencoders are trained, without their perceptual and GAN losses —
// flat synthetic pictures do not need them.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>

#include "models/vae.h"

namespace kiln {

struct VaeTrainingOptions {
  int64_t steps = 800;
  int64_t batch_size = 16;
  double lr = 2e-3;          // AdamW, cosine decay to zero after `warmup_steps`
  int64_t warmup_steps = 50;
  double kl_weight = 1e-6;   // LDM's kl-f8 uses 1e-6
  uint64_t seed = 1;         // batch order, crops and posterior noise
  // > 0: train on random crop x crop windows (a multiple of the downsampling factor) instead of
  // whole pictures; the networks are convolutional, so this costs a fraction and generalises.
  int64_t crop = 0;
};

// step (1-based) and that step's reconstruction MSE (images in [-1, 1]).
using VaeTrainingProgress = std::function<void(int64_t step, double mse)>;

// Trains every parameter of `vae` on `images` ([N, 3, H, W] in [-1, 1], H and W multiples of the
// VAE's downsampling) and returns the mean reconstruction MSE of the posterior means over all images
// afterwards. Deterministic for a seed on one machine.
double train_vae(AutoencoderKL& vae, const torch::Tensor& images, const VaeTrainingOptions& options,
                 const VaeTrainingProgress& progress = {});

// Rescales the latent space so that encode(images).mean * scaling_factor has unit standard
// deviation, by folding a factor into quant_conv (mean rows; the log-variance bias shifts by
// 2·ln factor) and its inverse into post_quant_conv: decode(encode(x)) is unchanged and the model
// works with the scaling factor every SD 1.x tool assumes. Returns the factor applied.
double normalise_latent_scale(AutoencoderKL& vae, const torch::Tensor& images);

}  // namespace kiln
