// SD 1.x UNet2DConditionModel (diffusers naming), as plain libtorch modules.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>

#include "models/attention.h"
#include "models/configs.h"

namespace kiln {

// Sinusoidal timestep features as diffusers' get_timestep_embedding: [B] -> [B, dim].
torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                 double freq_shift);

struct TimestepEmbeddingImpl : torch::nn::Module {
  TimestepEmbeddingImpl(int64_t in_dim, int64_t time_dim);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

// ResnetBlock2D with time conditioning; conv_shortcut only when the width changes.
struct ResnetBlock2DImpl : torch::nn::Module {
  ResnetBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t temb_channels, int64_t groups,
                    double eps);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb);
  torch::Tensor compute(const torch::Tensor& x, const torch::Tensor& temb);
  bool gradient_checkpointing = false;
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

// diffusers Attention as used by the UNet: to_q/to_k/to_v without bias, to_out.0 with bias.
struct CrossAttentionImpl : torch::nn::Module {
  CrossAttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);
  int64_t heads_;
  AttentionOptions attention;
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out;  // [0] = Linear (diffusers keeps a Dropout at [1], without weights)
};
TORCH_MODULE(CrossAttention);

// GEGLU feed-forward: net.0.proj (C -> 8C), value * gelu(gate), net.2 (4C -> C).
struct GEGLUImpl : torch::nn::Module {
  GEGLUImpl(int64_t dim_in, int64_t dim_out);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear proj{nullptr};
};
TORCH_MODULE(GEGLU);

struct FeedForwardImpl : torch::nn::Module {
  explicit FeedForwardImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::ModuleList net;  // [0] GEGLU, [1] Dropout (no weights; keeps diffusers' indices), [2] Linear
  GEGLU geglu{nullptr};
  torch::nn::Linear out{nullptr};
};
TORCH_MODULE(FeedForward);

struct BasicTransformerBlockImpl : torch::nn::Module {
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t context_dim);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  CrossAttention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

// SD 1.x SpatialTransformer: GN -> 1x1 proj_in -> transformer block on tokens -> 1x1 proj_out -> + x.
struct Transformer2DModelImpl : torch::nn::Module {
  Transformer2DModelImpl(int64_t channels, int64_t heads, int64_t context_dim, int64_t groups);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);
  torch::Tensor compute(const torch::Tensor& x, const torch::Tensor& context);
  bool gradient_checkpointing = false;
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d proj_in{nullptr}, proj_out{nullptr};
  torch::nn::ModuleList transformer_blocks;
};
TORCH_MODULE(Transformer2DModel);

struct Downsample2DImpl : torch::nn::Module {
  explicit Downsample2DImpl(int64_t channels);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Downsample2D);

struct Upsample2DImpl : torch::nn::Module {
  explicit Upsample2DImpl(int64_t channels);
  // `size` = the spatial size of the skip this output meets (odd latent sizes), or empty for x2.
  torch::Tensor forward(const torch::Tensor& x, c10::optional<std::vector<int64_t>> size);
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

// CrossAttnDownBlock2D / DownBlock2D (attentions empty for the latter).
struct DownBlockImpl : torch::nn::Module {
  DownBlockImpl(int64_t in_channels, int64_t out_channels, int64_t temb_channels, bool has_attention,
                bool add_downsample, int64_t heads, const UNetConfig& config);
  // Appends every layer's output (the skips) to `skips`.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& temb, const torch::Tensor& context,
                        std::vector<torch::Tensor>& skips);
  torch::nn::ModuleList resnets, attentions, downsamplers;
};
TORCH_MODULE(DownBlock);

// CrossAttnUpBlock2D / UpBlock2D.
struct UpBlockImpl : torch::nn::Module {
  UpBlockImpl(int64_t in_channels, int64_t prev_channels, int64_t out_channels, int64_t temb_channels,
              bool has_attention, bool add_upsample, int64_t heads, const UNetConfig& config);
  // Consumes skips from the back of `skips`.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& temb, const torch::Tensor& context,
                        std::vector<torch::Tensor>& skips, c10::optional<std::vector<int64_t>> upsample_size);
  torch::nn::ModuleList resnets, attentions, upsamplers;
};
TORCH_MODULE(UpBlock);

struct UNetMidBlockImpl : torch::nn::Module {
  UNetMidBlockImpl(int64_t channels, int64_t temb_channels, int64_t heads, const UNetConfig& config);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& temb, const torch::Tensor& context);
  torch::nn::ModuleList resnets, attentions;
};
TORCH_MODULE(UNetMidBlock);

// Intermediate activations for debugging and golden tests, keyed as diffusers module names.
using Activations = std::map<std::string, torch::Tensor>;

struct UNet2DConditionModelImpl : torch::nn::Module {
  explicit UNet2DConditionModelImpl(const UNetConfig& config);
  // sample [B,4,h,w], timestep [B] or [] (int or float), encoder_hidden_states [B,L,ctx] -> eps [B,4,h,w].
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                        const torch::Tensor& encoder_hidden_states, Activations* activations = nullptr);
  const UNetConfig& config() const { return config_; }
  // Chooses how every attention layer computes (memory vs. speed; same result within fp32).
  void set_attention(const AttentionOptions& options);
  // Recompute each resnet and transformer block in backward instead of keeping its activations.
  void set_gradient_checkpointing(bool enabled);

  UNetConfig config_;
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  torch::nn::ModuleList down_blocks, up_blocks;
  UNetMidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(UNet2DConditionModel);

}  // namespace kiln
