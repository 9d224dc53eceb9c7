// Multi-head scaled dot-product attention shared by the CLIP text encoder, the UNet and the VAE.
#pragma once
#include <torch/types.h>

#include <optional>

namespace kiln {

// q: [B, Lq, H*D], k/v: [B, Lk, H*D] -> [B, Lq, H*D]; softmax(q kᵀ · D^-0.5 + mask) v per head.
// `mask` (optional) is additive and broadcast to [B, H, Lq, Lk] (e.g. the causal mask of CLIP).
torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t num_heads,
                                   const std::optional<torch::Tensor>& mask = std::nullopt);

// Additive causal mask [L, L]: 0 on and below the diagonal, the dtype's lowest value above it
// (what transformers' CLIP builds), so token i attends to tokens j <= i.
torch::Tensor causal_attention_mask(int64_t length, torch::ScalarType dtype, torch::Device device);

}  // namespace kiln
