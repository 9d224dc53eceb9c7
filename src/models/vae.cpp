#include "models/vae.h"

#include "models/attention.h"

namespace kiln {
namespace F = torch::nn::functional;
using torch::nn::Conv2dOptions;

namespace {

constexpr double kVAENormEps = 1e-6;

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0) {
  return torch::nn::Conv2d(Conv2dOptions(in, out, kernel).stride(stride).padding(padding));
}
torch::nn::GroupNorm group_norm(int64_t groups, int64_t channels) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(kVAENormEps));
}

// Holds a single "conv" child so the key reads downsamplers.0.conv / upsamplers.0.conv.
struct ResampleImpl : torch::nn::Module {
  ResampleImpl(int64_t channels, bool down) : down_(down) {
    conv_ =
        register_module("conv", down ? conv(channels, channels, 3, 2, 0) : conv(channels, channels, 3, 1, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    if (down_) return conv_(F::pad(x, F::PadFuncOptions({0, 1, 0, 1})));  // asymmetric pad, as in LDM
    return conv_(F::interpolate(
        x, F::InterpolateFuncOptions().mode(torch::kNearest).scale_factor(std::vector<double>{2.0, 2.0})));
  }
  bool down_;
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Resample);

}  // namespace

VAEResnetBlockImpl::VAEResnetBlockImpl(int64_t in_channels, int64_t out_channels, int64_t groups) {
  norm1 = register_module("norm1", group_norm(groups, in_channels));
  conv1 = register_module("conv1", conv(in_channels, out_channels, 3, 1, 1));
  norm2 = register_module("norm2", group_norm(groups, out_channels));
  conv2 = register_module("conv2", conv(out_channels, out_channels, 3, 1, 1));
  if (in_channels != out_channels)
    conv_shortcut = register_module("conv_shortcut", conv(in_channels, out_channels, 1));
}

torch::Tensor VAEResnetBlockImpl::forward(const torch::Tensor& x) {
  auto h = conv1(torch::silu(norm1(x)));
  h = conv2(torch::silu(norm2(h)));
  return (conv_shortcut ? conv_shortcut(x) : x) + h;
}

VAEAttentionImpl::VAEAttentionImpl(int64_t channels, int64_t groups) {
  group_norm = register_module("group_norm", kiln::group_norm(groups, channels));
  to_q = register_module("to_q", torch::nn::Linear(channels, channels));
  to_k = register_module("to_k", torch::nn::Linear(channels, channels));
  to_v = register_module("to_v", torch::nn::Linear(channels, channels));
  to_out = register_module("to_out", torch::nn::ModuleList(torch::nn::Linear(channels, channels)));
}

torch::Tensor VAEAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto tokens = group_norm(x).reshape({b, c, h * w}).transpose(1, 2);  // [B, HW, C]
  auto out = multi_head_attention(to_q(tokens), to_k(tokens), to_v(tokens), 1, std::nullopt, attention);
  out = to_out[0]->as<torch::nn::Linear>()->forward(out);
  return out.transpose(1, 2).reshape({b, c, h, w}) + x;
}

VAEMidBlockImpl::VAEMidBlockImpl(int64_t channels, int64_t groups) {
  resnets = register_module("resnets", torch::nn::ModuleList(VAEResnetBlock(channels, channels, groups),
                                                             VAEResnetBlock(channels, channels, groups)));
  attentions = register_module("attentions", torch::nn::ModuleList(VAEAttention(channels, groups)));
}

torch::Tensor VAEMidBlockImpl::forward(const torch::Tensor& x) {
  auto h = resnets[0]->as<VAEResnetBlock>()->forward(x);
  h = attentions[0]->as<VAEAttention>()->forward(h);
  return resnets[1]->as<VAEResnetBlock>()->forward(h);
}

VAEBlockImpl::VAEBlockImpl(int64_t in_channels, int64_t out_channels, int64_t layers, int64_t groups,
                           bool downsample, bool upsample) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < layers; ++i)
    resnets->push_back(VAEResnetBlock(i == 0 ? in_channels : out_channels, out_channels, groups));
  downsamplers = register_module("downsamplers", torch::nn::ModuleList());
  upsamplers = register_module("upsamplers", torch::nn::ModuleList());
  if (downsample) downsamplers->push_back(Resample(out_channels, true));
  if (upsample) upsamplers->push_back(Resample(out_channels, false));
}

torch::Tensor VAEBlockImpl::forward(torch::Tensor x) {
  for (const auto& r : *resnets) x = r->as<VAEResnetBlock>()->forward(x);
  for (const auto& resample : *downsamplers) x = resample->as<Resample>()->forward(x);
  for (const auto& resample : *upsamplers) x = resample->as<Resample>()->forward(x);
  return x;
}

VAEEncoderImpl::VAEEncoderImpl(const VAEConfig& c) {
  const auto& widths = c.block_out_channels;
  conv_in = register_module("conv_in", conv(c.in_channels, widths[0], 3, 1, 1));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t channels = widths[0];
  for (size_t i = 0; i < widths.size(); ++i) {
    down_blocks->push_back(
        VAEBlock(channels, widths[i], c.layers_per_block, c.norm_num_groups, i + 1 < widths.size(), false));
    channels = widths[i];
  }
  mid_block = register_module("mid_block", VAEMidBlock(channels, c.norm_num_groups));
  conv_norm_out = register_module("conv_norm_out", group_norm(c.norm_num_groups, channels));
  conv_out = register_module("conv_out", conv(channels, 2 * c.latent_channels, 3, 1, 1));
}

torch::Tensor VAEEncoderImpl::forward(const torch::Tensor& x) {
  auto h = conv_in(x);
  for (const auto& block : *down_blocks) h = block->as<VAEBlock>()->forward(h);
  h = mid_block(h);
  return conv_out(torch::silu(conv_norm_out(h)));
}

VAEDecoderImpl::VAEDecoderImpl(const VAEConfig& c) {
  const auto& widths = c.block_out_channels;
  const size_t blocks = widths.size();
  conv_in = register_module("conv_in", conv(c.latent_channels, widths.back(), 3, 1, 1));
  mid_block = register_module("mid_block", VAEMidBlock(widths.back(), c.norm_num_groups));
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  int64_t channels = widths.back();
  for (size_t i = 0; i < blocks; ++i) {
    const int64_t out = widths[blocks - 1 - i];
    up_blocks->push_back(
        VAEBlock(channels, out, c.layers_per_block + 1, c.norm_num_groups, false, i + 1 < blocks));
    channels = out;
  }
  conv_norm_out = register_module("conv_norm_out", group_norm(c.norm_num_groups, channels));
  conv_out = register_module("conv_out", conv(channels, c.out_channels, 3, 1, 1));
}

torch::Tensor VAEDecoderImpl::forward(const torch::Tensor& z) {
  auto h = mid_block(conv_in(z));
  for (const auto& block : *up_blocks) h = block->as<VAEBlock>()->forward(h);
  return conv_out(torch::silu(conv_norm_out(h)));
}

AutoencoderKLImpl::AutoencoderKLImpl(const VAEConfig& config) : config_(config) {
  encoder = register_module("encoder", VAEEncoder(config));
  decoder = register_module("decoder", VAEDecoder(config));
  quant_conv = register_module("quant_conv", conv(2 * config.latent_channels, 2 * config.latent_channels, 1));
  post_quant_conv =
      register_module("post_quant_conv", conv(config.latent_channels, config.latent_channels, 1));
}

void AutoencoderKLImpl::set_attention(const AttentionOptions& options) {
  for (auto& module : modules(/*include_self=*/false))
    if (auto* attention = dynamic_cast<VAEAttentionImpl*>(module.get())) attention->attention = options;
}

DiagonalGaussian AutoencoderKLImpl::encode(const torch::Tensor& image) {
  auto moments = quant_conv(encoder(image));  // [B, 2*latent, h, w]: mean, logvar
  auto parts = moments.chunk(2, 1);
  DiagonalGaussian g;
  g.mean = parts[0];
  g.logvar = parts[1].clamp(-30.0, 20.0);
  g.std = (0.5 * g.logvar).exp();
  return g;
}

torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& latent) {
  return decoder(post_quant_conv(latent));
}

}  // namespace kiln
