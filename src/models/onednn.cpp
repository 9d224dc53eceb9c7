#include "models/onednn.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <optional>
#include <unordered_map>

#if defined(KILN_HAVE_ONEDNN) && TORCH_VERSION_MAJOR < 2
#include <ATen/autocast_mode.h>
#include <oneapi/dnnl/dnnl.hpp>
#if DNNL_VERSION_MAJOR == 2
#define KILN_ONEDNN_KERNELS 1
#endif
#endif

#include "util/error.h"

namespace kiln {

#ifdef KILN_ONEDNN_KERNELS

namespace {

using dims = dnnl::memory::dims;
using dnnl::memory;

// Everything one slice height needs. oneDNN keeps created primitives in its own cache, so building
// them again for the next call with the same shapes costs a lookup, not a JIT compilation.
struct SlicePrimitives {
  dnnl::matmul scores;
  dnnl::softmax_forward softmax;
  dnnl::matmul weighted_sum;
  memory::desc q, k, scores_desc, v, out;

  SlicePrimitives(const dnnl::engine& engine, int64_t batch, int64_t heads, int64_t rows, int64_t q_len,
                  int64_t k_len, int64_t head_dim, float scale) {
    const int64_t channels = heads * head_dim;
    // The [B, L, H*D] tensors are read and written in place as [B, H, L, D] through strides.
    q = memory::desc({batch, heads, rows, head_dim}, memory::data_type::f32, dims{q_len * channels, head_dim, channels, 1});
    k = memory::desc({batch, heads, head_dim, k_len}, memory::data_type::f32, dims{k_len * channels, head_dim, 1, channels});
    v = memory::desc({batch, heads, k_len, head_dim}, memory::data_type::f32, dims{k_len * channels, head_dim, channels, 1});
    out = q;
    scores_desc = memory::desc({batch, heads, rows, k_len}, memory::data_type::f32, memory::format_tag::abcd);
    dnnl::primitive_attr scaled;
    scaled.set_output_scales(0, {scale});  // applied to the fp32 sums: (q·k)·scale, as bmm then mul
    scores = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(q, k, scores_desc), scaled, engine));
    softmax = dnnl::softmax_forward(dnnl::softmax_forward::primitive_desc(
        dnnl::softmax_forward::desc(dnnl::prop_kind::forward_inference, scores_desc, 3), engine));
    weighted_sum = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(scores_desc, v, out), engine));
  }
};

}  // namespace

bool onednn_available() { return true; }

torch::Tensor apply_linear(torch::nn::LinearImpl& layer, const torch::Tensor& x, double min_flops) {
  const bool has_bias = layer.bias.defined();
  if (!onednn_applies({&x, &layer.weight}) || (has_bias && !onednn_applies({&layer.bias})) || x.dim() < 2 ||
      2.0 * static_cast<double>(x.numel()) * static_cast<double>(layer.weight.size(0)) < min_flops)
    return layer.forward(x);
  const auto input = x.contiguous();
  const auto weight = layer.weight.contiguous();
  const int64_t in = weight.size(1), out_features = weight.size(0), rows = input.numel() / in;
  using dt = memory::data_type;
  const memory::desc src({rows, in}, dt::f32, dims{in, 1}), weights({in, out_features}, dt::f32, dims{1, in}),
      dst({rows, out_features}, dt::f32, dims{out_features, 1}), bias({1, out_features}, dt::f32, dims{out_features, 1});
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  const auto desc = has_bias ? dnnl::matmul::desc(src, weights, bias, dst) : dnnl::matmul::desc(src, weights, dst);
  dnnl::matmul matmul(dnnl::matmul::primitive_desc(desc, engine));
  auto sizes = input.sizes().vec();
  sizes.back() = out_features;
  auto result = torch::empty(sizes, input.options());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(src, engine, input.data_ptr())},
                                       {DNNL_ARG_WEIGHTS, memory(weights, engine, weight.data_ptr())},
                                       {DNNL_ARG_DST, memory(dst, engine, result.data_ptr())}};
  if (has_bias) args.emplace(DNNL_ARG_BIAS, memory(bias, engine, layer.bias.data_ptr()));
  dnnl::stream stream(engine);
  matmul.execute(stream, args);
  stream.wait();
  return result;
}

torch::Tensor onednn_attention(const torch::Tensor& q_in, const torch::Tensor& k_in, const torch::Tensor& v_in,
                               int64_t num_heads, double scale, int64_t slice_bytes) {
  TORCH_CHECK(onednn_applies({&q_in, &k_in, &v_in}), "onednn_attention: CPU fp32 inputs without a graph");
  const auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t batch = q.size(0), q_len = q.size(1), k_len = k.size(1), channels = q.size(2);
  const int64_t head_dim = channels / num_heads;
  const int64_t row_bytes = batch * num_heads * k_len * static_cast<int64_t>(sizeof(float));
  const int64_t rows = std::clamp<int64_t>(slice_bytes / row_bytes, 1, q_len);

  // oneDNN's CPU engine and stream are cheap handles; the stream runs primitives on the calling
  // thread with oneDNN's OpenMP pool, the same libgomp pool (and thread count) as torch's.
  const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  auto out = torch::empty_like(q);
  auto scores = torch::empty({batch, num_heads, rows, k_len}, q.options());
  const auto scale_f = static_cast<float>(scale);
  SlicePrimitives full(engine, batch, num_heads, rows, q_len, k_len, head_dim, scale_f);
  std::optional<SlicePrimitives> tail;
  if (q_len % rows != 0)
    tail.emplace(engine, batch, num_heads, q_len % rows, q_len, k_len, head_dim, scale_f);

  memory k_mem(full.k, engine, k.data_ptr()), v_mem(full.v, engine, v.data_ptr());
  for (int64_t start = 0; start < q_len; start += rows) {
    auto& p = start + rows <= q_len ? full : *tail;
    float* q_rows = q.data_ptr<float>() + start * channels;
    float* out_rows = out.data_ptr<float>() + start * channels;
    memory q_mem(p.q, engine, q_rows), out_mem(p.out, engine, out_rows),
        scores_mem(p.scores_desc, engine, scores.data_ptr());
    p.scores.execute(stream, {{DNNL_ARG_SRC, q_mem}, {DNNL_ARG_WEIGHTS, k_mem}, {DNNL_ARG_DST, scores_mem}});
    p.softmax.execute(stream, {{DNNL_ARG_SRC, scores_mem}, {DNNL_ARG_DST, scores_mem}});
    p.weighted_sum.execute(stream,
                           {{DNNL_ARG_SRC, scores_mem}, {DNNL_ARG_WEIGHTS, v_mem}, {DNNL_ARG_DST, out_mem}});
  }
  stream.wait();
  return out;
}

#else

bool onednn_available() { return false; }

torch::Tensor onednn_attention(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, int64_t, double,
                               int64_t) {
  throw Error("attention 'onednn' is not in this build (it needs libtorch < 2 and oneDNN 2 headers: Debian libdnnl-dev)");
}

torch::Tensor apply_linear(torch::nn::LinearImpl& layer, const torch::Tensor& x, double) { return layer.forward(x); }

#endif

bool onednn_applies(std::initializer_list<const torch::Tensor*> tensors) {
#ifdef KILN_ONEDNN_KERNELS
  // Under autocast, libtorch's own ops pick the lower precision; these kernels would not.
  if (at::autocast::is_cpu_enabled()) return false;
  const bool grad_mode = torch::GradMode::is_enabled();
  for (const auto* t : tensors)
    if (!t->device().is_cpu() || t->scalar_type() != torch::kFloat32 || (grad_mode && t->requires_grad()))
      return false;
  return true;
#else
  (void)tensors;
  return false;
#endif
}

}  // namespace kiln
