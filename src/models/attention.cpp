#include "models/attention.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace kiln {

torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t num_heads, const std::optional<torch::Tensor>& mask) {
  const int64_t batch = q.size(0), q_len = q.size(1), k_len = k.size(1), channels = q.size(2);
  TORCH_CHECK(channels % num_heads == 0, "attention width ", channels, " not divisible by ", num_heads,
              " heads");
  const int64_t head_dim = channels / num_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  auto split = [&](const torch::Tensor& t, int64_t len) {
    return t.reshape({batch, len, num_heads, head_dim}).permute({0, 2, 1, 3});  // [B, H, L, D]
  };
  // bmm then scale (never baddbmm over uninitialised memory: a libtorch 1.13 CPU defect turns it into NaN).
  auto scores = torch::matmul(split(q, q_len), split(k, k_len).transpose(-1, -2)) * scale;  // [B, H, Lq, Lk]
  if (mask) scores = scores + *mask;
  auto probs = scores.softmax(-1);
  auto out = torch::matmul(probs, split(v, k_len));  // [B, H, Lq, D]
  return out.permute({0, 2, 1, 3}).reshape({batch, q_len, channels});
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
