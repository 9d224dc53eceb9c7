// Multi-head scaled dot-product attention shared by the CLIP text encoder, the UNet and the VAE.
#pragma once
#include <torch/types.h>

#include <optional>
#include <string>

namespace kiln {

// How attention is computed. All give the same result within fp32 rounding; they differ in memory:
// Plain materialises every score ([B, H, Lq, Lk]: 1 GiB per UNet layer for a 512² image),
// Chunked walks the queries in slices whose scores fit `chunk_bytes`, Fused is libtorch ≥ 2's
// scaled_dot_product_attention (flash / memory-efficient kernels), OneDnn is Chunked through oneDNN's
// matmul and softmax (2.7x faster on CPU under libtorch 1.13; inference without a mask only, else it
// computes as Chunked). Auto: Fused where libtorch has it, else OneDnn where it applies to a call of at
// least kOneDnnMinFlops (models/onednn.h), else Chunked.
enum class AttentionKernel { Auto, Plain, Chunked, OneDnn, Fused };
AttentionKernel parse_attention_kernel(const std::string& name);  // auto | plain | chunked | onednn | fused
std::string attention_kernel_name(AttentionKernel kernel);
bool fused_attention_available();

struct AttentionOptions {
  AttentionKernel kernel = AttentionKernel::Auto;
  // Score memory per slice for Chunked. Slices that stay inside the last-level cache between the two
  // matmuls and the softmax are faster as well as leaner: SD 1.5 UNet forward at 512² on the 2-core
  // CI VM (32 MiB L3), 8.0 s at 64 MiB, 6.4 s at 16 MiB, 6.5–6.8 s at 8 MiB, 6.9 s at 32 MiB.
  int64_t chunk_bytes = int64_t{16} << 20;
};

// q: [B, Lq, H*D], k/v: [B, Lk, H*D] -> [B, Lq, H*D]; softmax(q kᵀ · D^-0.5 + mask) v per head.
// `mask` (optional) is additive and broadcast to [B, H, Lq, Lk] (e.g. the causal mask of CLIP).
torch::Tensor multi_head_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   int64_t num_heads, const std::optional<torch::Tensor>& mask = std::nullopt,
                                   const AttentionOptions& options = {});

// Additive causal mask [L, L]: 0 on and below the diagonal, the dtype's lowest value above it
// (what transformers' CLIP builds), so token i attends to tokens j <= i.
torch::Tensor causal_attention_mask(int64_t length, torch::ScalarType dtype, torch::Device device);

}  // namespace kiln
