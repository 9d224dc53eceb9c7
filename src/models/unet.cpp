#include "models/unet.h"

#include <cmath>

#include "models/attention.h"
#include "models/gradient_checkpoint.h"
#include "models/onednn.h"

namespace kiln {
namespace F = torch::nn::functional;
using torch::nn::Conv2dOptions;

namespace {

torch::nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride = 1) {
  return torch::nn::Conv2d(Conv2dOptions(in, out, 3).stride(stride).padding(1));
}
torch::nn::Conv2d conv1x1(int64_t in, int64_t out) { return torch::nn::Conv2d(Conv2dOptions(in, out, 1)); }
torch::nn::GroupNorm group_norm(int64_t groups, int64_t channels, double eps) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(eps));
}
torch::nn::Linear linear(int64_t in, int64_t out, bool bias = true) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

}  // namespace

torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                 double freq_shift) {
  const int64_t half = dim / 2;
  auto exponent =
      -std::log(10000.0) *
      torch::arange(0, half, torch::TensorOptions().dtype(torch::kFloat32).device(timesteps.device()));
  exponent = exponent / (static_cast<double>(half) - freq_shift);
  auto emb = timesteps.to(torch::kFloat32).unsqueeze(1) * exponent.exp().unsqueeze(0);  // [B, half]
  emb = torch::cat({emb.sin(), emb.cos()}, -1);
  if (flip_sin_to_cos) emb = torch::cat({emb.narrow(1, half, half), emb.narrow(1, 0, half)}, -1);
  if (dim % 2 == 1) emb = F::pad(emb, F::PadFuncOptions({0, 1}));
  return emb;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_dim, int64_t time_dim) {
  linear_1 = register_module("linear_1", linear(in_dim, time_dim));
  linear_2 = register_module("linear_2", linear(time_dim, time_dim));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& x) {
  return linear_2(torch::silu(linear_1(x)));
}

ResnetBlock2DImpl::ResnetBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t temb_channels,
                                     int64_t groups, double eps) {
  norm1 = register_module("norm1", group_norm(groups, in_channels, eps));
  conv1 = register_module("conv1", conv3x3(in_channels, out_channels));
  time_emb_proj = register_module("time_emb_proj", linear(temb_channels, out_channels));
  norm2 = register_module("norm2", group_norm(groups, out_channels, eps));
  conv2 = register_module("conv2", conv3x3(out_channels, out_channels));
  if (in_channels != out_channels)
    conv_shortcut = register_module("conv_shortcut", conv1x1(in_channels, out_channels));
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  if (gradient_checkpointing && is_training())
    return checkpointed([this](const std::vector<torch::Tensor>& in) { return compute(in[0], in[1]); },
                        {x, temb});
  return compute(x, temb);
}

torch::Tensor ResnetBlock2DImpl::compute(const torch::Tensor& x, const torch::Tensor& temb) {
  auto h = conv1(torch::silu(norm1(x)));
  h = h + time_emb_proj(torch::silu(temb)).unsqueeze(-1).unsqueeze(-1);  // [B, C, 1, 1]
  h = conv2(torch::silu(norm2(h)));
  return (conv_shortcut ? conv_shortcut(x) : x) + h;
}

CrossAttentionImpl::CrossAttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads)
    : heads_(heads) {
  to_q = register_module("to_q", linear(query_dim, query_dim, false));
  to_k = register_module("to_k", linear(context_dim, query_dim, false));
  to_v = register_module("to_v", linear(context_dim, query_dim, false));
  to_out = register_module("to_out", torch::nn::ModuleList(linear(query_dim, query_dim)));
}

torch::Tensor CrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  auto out = multi_head_attention(apply_linear(*to_q, x), apply_linear(*to_k, context),
                                  apply_linear(*to_v, context), heads_, std::nullopt, attention);
  return apply_linear(*to_out[0]->as<torch::nn::Linear>(), out);
}

GEGLUImpl::GEGLUImpl(int64_t dim_in, int64_t dim_out) {
  proj = register_module("proj", linear(dim_in, dim_out * 2));
}

torch::Tensor GEGLUImpl::forward(const torch::Tensor& x) {
  auto parts = apply_linear(*proj, x).chunk(2, -1);  // value, gate
  return parts[0] * torch::gelu(parts[1]);
}

FeedForwardImpl::FeedForwardImpl(int64_t dim) {
  geglu = GEGLU(dim, 4 * dim);
  out = linear(4 * dim, dim);
  net = register_module("net", torch::nn::ModuleList(geglu, torch::nn::Dropout(0.0), out));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) { return apply_linear(*out, geglu(x)); }

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t context_dim) {
  auto layer_norm = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-5)); };
  norm1 = register_module("norm1", layer_norm());
  attn1 = register_module("attn1", CrossAttention(dim, dim, heads));
  norm2 = register_module("norm2", layer_norm());
  attn2 = register_module("attn2", CrossAttention(dim, context_dim, heads));
  norm3 = register_module("norm3", layer_norm());
  ff = register_module("ff", FeedForward(dim));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  auto h = norm1(x);
  auto out = attn1(h, h) + x;
  out = attn2(norm2(out), context) + out;
  return ff(norm3(out)) + out;
}

Transformer2DModelImpl::Transformer2DModelImpl(int64_t channels, int64_t heads, int64_t context_dim,
                                               int64_t groups) {
  norm = register_module("norm", group_norm(groups, channels, 1e-6));
  proj_in = register_module("proj_in", conv1x1(channels, channels));
  transformer_blocks = register_module(
      "transformer_blocks", torch::nn::ModuleList(BasicTransformerBlock(channels, heads, context_dim)));
  proj_out = register_module("proj_out", conv1x1(channels, channels));
}

torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  if (gradient_checkpointing && is_training())
    return checkpointed([this](const std::vector<torch::Tensor>& in) { return compute(in[0], in[1]); },
                        {x, context});
  return compute(x, context);
}

torch::Tensor Transformer2DModelImpl::compute(const torch::Tensor& x, const torch::Tensor& context) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto tokens = proj_in(norm(x)).permute({0, 2, 3, 1}).reshape({b, h * w, c});  // [B, HW, C]
  for (const auto& block : *transformer_blocks)
    tokens = block->as<BasicTransformerBlock>()->forward(tokens, context);
  // contiguous() as diffusers does: a channels-last view would send proj_out (and everything after the
  // residual add) down other conv kernels with other rounding.
  auto out = tokens.reshape({b, h, w, c}).permute({0, 3, 1, 2}).contiguous();  // [B, C, H, W]
  return proj_out(out) + x;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels) {
  conv = register_module("conv", conv3x3(channels, channels, 2));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) { return conv(x); }

Upsample2DImpl::Upsample2DImpl(int64_t channels) {
  conv = register_module("conv", conv3x3(channels, channels));
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x, c10::optional<std::vector<int64_t>> size) {
  auto options = F::InterpolateFuncOptions().mode(torch::kNearest);
  if (size)
    options.size(*size);
  else
    options.scale_factor(std::vector<double>{2.0, 2.0});
  return conv(F::interpolate(x, options));
}

DownBlockImpl::DownBlockImpl(int64_t in_channels, int64_t out_channels, int64_t temb_channels,
                             bool has_attention, bool add_downsample, int64_t heads,
                             const UNetConfig& config) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  downsamplers = register_module("downsamplers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.layers_per_block; ++i) {
    resnets->push_back(ResnetBlock2D(i == 0 ? in_channels : out_channels, out_channels, temb_channels,
                                     config.norm_num_groups, config.norm_eps));
    if (has_attention)
      attentions->push_back(
          Transformer2DModel(out_channels, heads, config.cross_attention_dim, config.norm_num_groups));
  }
  if (add_downsample) downsamplers->push_back(Downsample2D(out_channels));
}

torch::Tensor DownBlockImpl::forward(torch::Tensor x, const torch::Tensor& temb, const torch::Tensor& context,
                                     std::vector<torch::Tensor>& skips) {
  for (size_t i = 0; i < resnets->size(); ++i) {
    x = resnets[i]->as<ResnetBlock2D>()->forward(x, temb);
    if (!attentions->is_empty()) x = attentions[i]->as<Transformer2DModel>()->forward(x, context);
    skips.push_back(x);
  }
  for (const auto& down : *downsamplers) {
    x = down->as<Downsample2D>()->forward(x);
    skips.push_back(x);
  }
  return x;
}

UpBlockImpl::UpBlockImpl(int64_t in_channels, int64_t prev_channels, int64_t out_channels,
                         int64_t temb_channels, bool has_attention, bool add_upsample, int64_t heads,
                         const UNetConfig& config) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  upsamplers = register_module("upsamplers", torch::nn::ModuleList());
  const int64_t layers = config.layers_per_block + 1;
  for (int64_t i = 0; i < layers; ++i) {
    // diffusers: the last resnet meets the block's input-side skip, the first meets the previous block's
    // output.
    const int64_t skip_channels = i == layers - 1 ? in_channels : out_channels;
    const int64_t resnet_in = i == 0 ? prev_channels : out_channels;
    resnets->push_back(ResnetBlock2D(resnet_in + skip_channels, out_channels, temb_channels,
                                     config.norm_num_groups, config.norm_eps));
    if (has_attention)
      attentions->push_back(
          Transformer2DModel(out_channels, heads, config.cross_attention_dim, config.norm_num_groups));
  }
  if (add_upsample) upsamplers->push_back(Upsample2D(out_channels));
}

torch::Tensor UpBlockImpl::forward(torch::Tensor x, const torch::Tensor& temb, const torch::Tensor& context,
                                   std::vector<torch::Tensor>& skips,
                                   c10::optional<std::vector<int64_t>> upsample_size) {
  for (size_t i = 0; i < resnets->size(); ++i) {
    x = torch::cat({x, skips.back()}, 1);
    skips.pop_back();
    x = resnets[i]->as<ResnetBlock2D>()->forward(x, temb);
    if (!attentions->is_empty()) x = attentions[i]->as<Transformer2DModel>()->forward(x, context);
  }
  for (const auto& up : *upsamplers) x = up->as<Upsample2D>()->forward(x, upsample_size);
  return x;
}

UNetMidBlockImpl::UNetMidBlockImpl(int64_t channels, int64_t temb_channels, int64_t heads,
                                   const UNetConfig& config) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  for (int i = 0; i < 2; ++i)
    resnets->push_back(
        ResnetBlock2D(channels, channels, temb_channels, config.norm_num_groups, config.norm_eps));
  attentions->push_back(
      Transformer2DModel(channels, heads, config.cross_attention_dim, config.norm_num_groups));
}

torch::Tensor UNetMidBlockImpl::forward(torch::Tensor x, const torch::Tensor& temb,
                                        const torch::Tensor& context) {
  x = resnets[0]->as<ResnetBlock2D>()->forward(x, temb);
  x = attentions[0]->as<Transformer2DModel>()->forward(x, context);
  return resnets[1]->as<ResnetBlock2D>()->forward(x, temb);
}

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNetConfig& config) : config_(config) {
  const auto& widths = config.block_out_channels;
  const int64_t blocks = static_cast<int64_t>(widths.size());
  TORCH_CHECK(!config.use_linear_projection, "SD 2.x UNets (use_linear_projection) are not supported");
  TORCH_CHECK(blocks > 0 && static_cast<int64_t>(config.num_attention_heads.size()) == blocks &&
                  static_cast<int64_t>(config.down_block_has_attention.size()) == blocks &&
                  static_cast<int64_t>(config.up_block_has_attention.size()) == blocks,
              "UNet config: block lists disagree in length");
  const int64_t time_dim = widths[0] * 4;
  conv_in = register_module("conv_in", conv3x3(config.in_channels, widths[0]));
  time_embedding = register_module("time_embedding", TimestepEmbedding(widths[0], time_dim));

  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t channels = widths[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t in = channels;
    channels = widths[i];
    down_blocks->push_back(DownBlock(in, channels, time_dim, config.down_block_has_attention[i],
                                     i + 1 < blocks, config.num_attention_heads[i], config));
  }
  mid_block = register_module(
      "mid_block", UNetMidBlock(widths.back(), time_dim, config.num_attention_heads.back(), config));

  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  int64_t prev = widths.back();
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t out = widths[blocks - 1 - i];
    const int64_t in = widths[std::max<int64_t>(blocks - 2 - i, 0)];
    up_blocks->push_back(UpBlock(in, prev, out, time_dim, config.up_block_has_attention[i], i + 1 < blocks,
                                 config.num_attention_heads[blocks - 1 - i], config));
    prev = out;
  }
  conv_norm_out =
      register_module("conv_norm_out", group_norm(config.norm_num_groups, widths[0], config.norm_eps));
  conv_out = register_module("conv_out", conv3x3(widths[0], config.out_channels));
}

void UNet2DConditionModelImpl::set_gradient_checkpointing(bool enabled) {
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* resnet = dynamic_cast<ResnetBlock2DImpl*>(module.get()))
      resnet->gradient_checkpointing = enabled;
    if (auto* transformer = dynamic_cast<Transformer2DModelImpl*>(module.get()))
      transformer->gradient_checkpointing = enabled;
  }
}

void UNet2DConditionModelImpl::set_attention(const AttentionOptions& options) {
  for (auto& module : modules(/*include_self=*/false))
    if (auto* attention = dynamic_cast<CrossAttentionImpl*>(module.get())) attention->attention = options;
}

torch::Tensor UNet2DConditionModelImpl::forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                                                const torch::Tensor& encoder_hidden_states,
                                                Activations* activations) {
  const int64_t batch = sample.size(0);
  auto timesteps = timestep.dim() == 0 ? timestep.reshape({1}) : timestep;
  timesteps = timesteps.to(sample.device()).expand({batch});
  auto t_features = timestep_embedding(timesteps, config_.block_out_channels[0], config_.flip_sin_to_cos,
                                       static_cast<double>(config_.freq_shift))
                        .to(sample.dtype());
  auto temb = time_embedding(t_features);  // [B, 4*C0]
  auto record = [&](const std::string& name, const torch::Tensor& t) {
    if (activations) (*activations)[name] = t;
  };
  record("time_proj", t_features);
  record("time_embedding", temb);

  auto x = conv_in(sample);
  record("conv_in", x);
  std::vector<torch::Tensor> skips{x};
  for (size_t i = 0; i < down_blocks->size(); ++i) {
    x = down_blocks[i]->as<DownBlock>()->forward(x, temb, encoder_hidden_states, skips);
    record("down_blocks." + std::to_string(i), x);
  }
  x = mid_block(x, temb, encoder_hidden_states);
  record("mid_block", x);
  for (size_t i = 0; i < up_blocks->size(); ++i) {
    auto* block = up_blocks[i]->as<UpBlock>();
    const size_t consumed = block->resnets->size();
    // Upsample to the size of the skip the next block meets first, so odd latent sizes line up.
    c10::optional<std::vector<int64_t>> upsample_size;
    if (!block->upsamplers->is_empty() && skips.size() > consumed) {
      const auto& next_skip = skips[skips.size() - consumed - 1];
      upsample_size = std::vector<int64_t>{next_skip.size(2), next_skip.size(3)};
    }
    x = block->forward(x, temb, encoder_hidden_states, skips, upsample_size);
    record("up_blocks." + std::to_string(i), x);
  }
  return conv_out(torch::silu(conv_norm_out(x)));
}

}  // namespace kiln
