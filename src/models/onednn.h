// CPU inference kernels through oneDNN's matmul and softmax primitives, for libtorch 1.x.
//
// libtorch 1.13 on CPU runs attention's bmm as one single-threaded BLAS call per head and its linear
// layers as single-threaded OpenBLAS calls (two thread pools fight otherwise, util/threads.h). On the
// 2-core CI VM, a 512² SD 1.5 self-attention layer took 373 ms through bmm against 167 ms here, and
// a 4096×1280→320 linear layer ran at 127 against 251 GFLOP/s. libtorch ≥ 2 has its own fused
// attention kernel and does not take these paths.
#pragma once
#include <torch/nn/modules/linear.h>
#include <torch/types.h>

namespace kiln {

// True when this build carries the oneDNN kernels (libtorch < 2 with oneDNN 2.x headers at build time).
bool onednn_available();

// Whether the kernels below can take these tensors: CPU fp32, no autocast, no graph to record.
bool onednn_applies(std::initializer_list<const torch::Tensor*> tensors);

// softmax(q kᵀ · scale) v per head, rounded like bmm-then-scale. q: [B, Lq, H*D], k/v: [B, Lk, H*D]
// -> [B, Lq, H*D]. Queries are walked in slices whose scores take at most `slice_bytes`.
torch::Tensor onednn_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               int64_t num_heads, double scale, int64_t slice_bytes);

// Below this many FLOPs a call is cheaper through libtorch: building a oneDNN primitive costs ~50 µs
// (a 64×32→32 layer ran 4× slower through oneDNN), while SD 1.5's smallest transformer layers at 512²
// do ~200 MFLOP.
constexpr double kOneDnnMinFlops = 64e6;

// layer(x), through oneDNN where it applies and the layer does at least `min_flops`, through the
// layer's own forward otherwise.
torch::Tensor apply_linear(torch::nn::LinearImpl& layer, const torch::Tensor& x, double min_flops = kOneDnnMinFlops);

}  // namespace kiln
