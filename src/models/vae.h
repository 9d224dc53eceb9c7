// SD 1.x VAE (diffusers AutoencoderKL naming): image [-1,1] <-> 4-channel latent at 1/8 resolution.
#pragma once
#include <torch/torch.h>

#include "models/attention.h"
#include "models/configs.h"

namespace kiln {

// ResnetBlock2D without time conditioning (VAE flavour, GroupNorm eps 1e-6).
struct VAEResnetBlockImpl : torch::nn::Module {
  VAEResnetBlockImpl(int64_t in_channels, int64_t out_channels, int64_t groups);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
};
TORCH_MODULE(VAEResnetBlock);

// Single-head self-attention over pixels with a residual (diffusers Attention in the VAE mid block).
struct VAEAttentionImpl : torch::nn::Module {
  VAEAttentionImpl(int64_t channels, int64_t groups);
  torch::Tensor forward(const torch::Tensor& x);
  AttentionOptions attention;
  torch::nn::GroupNorm group_norm{nullptr};
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out;  // [0] = Linear
};
TORCH_MODULE(VAEAttention);

struct VAEMidBlockImpl : torch::nn::Module {
  VAEMidBlockImpl(int64_t channels, int64_t groups);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::ModuleList resnets, attentions;
};
TORCH_MODULE(VAEMidBlock);

// DownEncoderBlock2D / UpDecoderBlock2D: resnets, then an optional resampler.
struct VAEBlockImpl : torch::nn::Module {
  VAEBlockImpl(int64_t in_channels, int64_t out_channels, int64_t layers, int64_t groups, bool downsample,
               bool upsample);
  torch::Tensor forward(torch::Tensor x);
  torch::nn::ModuleList resnets, downsamplers, upsamplers;
};
TORCH_MODULE(VAEBlock);

struct VAEEncoderImpl : torch::nn::Module {
  explicit VAEEncoderImpl(const VAEConfig& config);
  torch::Tensor forward(
      const torch::Tensor& x);  // [B,3,H,W] -> moments before quant_conv [B,2*latent,H/8,W/8]
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down_blocks;
  VAEMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VAEEncoder);

struct VAEDecoderImpl : torch::nn::Module {
  explicit VAEDecoderImpl(const VAEConfig& config);
  torch::Tensor forward(const torch::Tensor& z);  // after post_quant_conv -> image [B,3,8h,8w]
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList up_blocks;
  VAEMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VAEDecoder);

// The encoder's diagonal Gaussian over latents (unscaled: multiply by scaling_factor for the UNet).
struct DiagonalGaussian {
  torch::Tensor mean;    // [B, 4, h, w]
  torch::Tensor logvar;  // clamped to [-30, 20] as diffusers does
  torch::Tensor std;     // exp(logvar / 2)
  // mean + std * noise; the caller supplies the noise so runs are reproducible.
  torch::Tensor sample(const torch::Tensor& noise) const { return mean + std * noise; }
};

struct AutoencoderKLImpl : torch::nn::Module {
  explicit AutoencoderKLImpl(const VAEConfig& config);
  DiagonalGaussian encode(const torch::Tensor& image);
  torch::Tensor decode(const torch::Tensor& latent);  // unscaled latent -> image in about [-1, 1]
  // The UNet works on latents * scaling_factor (0.18215 for SD 1.x).
  double scaling_factor() const { return config_.scaling_factor; }
  void set_attention(const AttentionOptions& options);
  const VAEConfig& config() const { return config_; }

  VAEConfig config_;
  VAEEncoder encoder{nullptr};
  VAEDecoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};
};
TORCH_MODULE(AutoencoderKL);

}  // namespace kiln
