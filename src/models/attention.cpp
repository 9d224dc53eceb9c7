#include "models/attention.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "models/onednn.h"
#include "util/error.h"

namespace kiln {

bool fused_attention_available() {
#if TORCH_VERSION_MAJOR >= 2
  return true;
#else
  return false;
#endif
}

AttentionKernel parse_attention_kernel(const std::string& name) {
  if (name == "auto") return AttentionKernel::Auto;
  if (name == "plain") return AttentionKernel::Plain;
  if (name == "chunked") return AttentionKernel::Chunked;
  if (name == "onednn") {
    if (!onednn_available())
      throw Error("attention 'onednn' is not in this build (it needs libtorch < 2 and Debian's libdnnl-dev); use auto, "
                  "plain or chunked");
    return AttentionKernel::OneDnn;
  }
  if (name == "fused") {
    if (!fused_attention_available())
      throw Error("attention 'fused' needs libtorch >= 2 (this build has " TORCH_VERSION
                  "); use auto, plain or chunked");
    return AttentionKernel::Fused;
  }
  throw Error("unknown attention kernel '" + name + "' (auto, plain, chunked, onednn, fused)");
}

std::string attention_kernel_name(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::Auto:
      return "auto";
    case AttentionKernel::Plain:
      return "plain";
    case AttentionKernel::Chunked:
      return "chunked";
    case AttentionKernel::OneDnn:
      return "onednn";
    case AttentionKernel::Fused:
      return "fused";
  }
  return "?";
}

namespace {

// softmax(q kᵀ · scale + mask) v on [B, H, L, D] tensors. bmm then scale, as diffusers' baddbmm
// rounds, but never baddbmm over uninitialised memory (a libtorch 1.13 CPU defect turns it into
// NaN). The scores are the one big tensor of a UNet pass (memory-bound, ~25 % of a 512² forward
// when each step made a new copy): scale, mask and, without a graph, softmax work on them in place.
// In place is safe under autograd for the scale and mask (bmm keeps its inputs, not its output).
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                     const std::optional<torch::Tensor>& mask) {
  auto scores = torch::matmul(q, k.transpose(-1, -2));
  scores.mul_(scale);
  if (mask) scores.add_(*mask);
  if (torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad() ||
                                        (mask && mask->requires_grad())))
    return torch::matmul(scores.softmax(-1), v);
  at::_softmax_out(scores, scores, -1, false);
  return torch::matmul(scores, v);
}

}  // namespace

torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t num_heads, const std::optional<torch::Tensor>& mask,
                                   const AttentionOptions& options) {
  const int64_t batch = q.size(0), q_len = q.size(1), k_len = k.size(1), channels = q.size(2);
  TORCH_CHECK(channels % num_heads == 0, "attention width ", channels, " not divisible by ", num_heads,
              " heads");
  const int64_t head_dim = channels / num_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  auto split = [&](const torch::Tensor& t, int64_t len) {
    return t.reshape({batch, len, num_heads, head_dim}).permute({0, 2, 1, 3});  // [B, H, L, D]
  };
  auto merge = [&](const torch::Tensor& t) {
    return t.permute({0, 2, 1, 3}).reshape({batch, q_len, channels});
  };
  auto kernel = options.kernel;
  const bool onednn_fits = !mask && q.dim() == 3 && onednn_applies({&q, &k, &v});
  const double flops = 4.0 * static_cast<double>(batch * q_len * k_len * channels);
  if (kernel == AttentionKernel::Auto)
    kernel = fused_attention_available()               ? AttentionKernel::Fused
             : onednn_fits && flops >= kOneDnnMinFlops ? AttentionKernel::OneDnn
                                                       : AttentionKernel::Chunked;
  if (kernel == AttentionKernel::OneDnn) {
    if (onednn_fits) return onednn_attention(q, k, v, num_heads, scale, options.chunk_bytes);
    kernel = AttentionKernel::Chunked;  // training (a graph to record), a mask or not CPU fp32
  }
  auto qh = split(q, q_len), kh = split(k, k_len), vh = split(v, k_len);
#if TORCH_VERSION_MAJOR >= 2
  if (kernel == AttentionKernel::Fused) {
    c10::optional<torch::Tensor> fused_mask;  // c10::optional: not yet std::optional before torch 2.3
    if (mask) fused_mask = mask->expand({batch, num_heads, q_len, k_len});
    return merge(at::scaled_dot_product_attention(qh, kh, vh, fused_mask, 0.0, false));
  }
#endif
  const int64_t row_bytes = batch * num_heads * k_len * static_cast<int64_t>(q.element_size());
  if (kernel != AttentionKernel::Chunked || q_len * row_bytes <= options.chunk_bytes)
    return merge(attend(qh, kh, vh, scale, mask));

  // Query rows are independent: slice them so only one slice's scores exist at a time.
  const int64_t rows = std::max<int64_t>(1, options.chunk_bytes / row_bytes);
  auto out = torch::empty({batch, num_heads, q_len, head_dim}, q.options());
  for (int64_t start = 0; start < q_len; start += rows) {
    const int64_t end = std::min(q_len, start + rows);
    std::optional<torch::Tensor> mask_rows;
    if (mask) mask_rows = mask->size(-2) == 1 ? *mask : mask->slice(-2, start, end);
    out.slice(2, start, end).copy_(attend(qh.slice(2, start, end), kh, vh, scale, mask_rows));
  }
  return merge(out);
}

torch::Tensor causal_attention_mask(int64_t length, torch::ScalarType dtype, torch::Device device) {
  auto options = torch::TensorOptions().dtype(dtype).device(device);
  auto lowest = torch::full({length, length}, -std::numeric_limits<float>::infinity(), options);
  if (dtype == torch::kFloat16)
    lowest.fill_(-65504.0);
  else if (dtype == torch::kBFloat16)
    lowest.fill_(-3.3895313892515355e38);
  else if (dtype == torch::kFloat32)
    lowest.fill_(std::numeric_limits<float>::lowest());
  return torch::triu(lowest, 1);
}

}  // namespace kiln
