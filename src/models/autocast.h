// Mixed precision: the `mixed_precision = "no" | "bf16" | "fp16"` setting and an RAII autocast scope.
// Under autocast the weights stay fp32 (the optimizer updates them there) and matmul-like ops run in
// the low-precision dtype, casting their inputs on the fly, the way torch.autocast does. fp32 is the
// default; bf16 and fp16 are opt-in and tested against it (tests/test_mixed_precision.cpp).
#pragma once
#include <torch/types.h>

#include <string>

namespace kiln {

enum class MixedPrecision { No, BF16, FP16 };

// "no" | "bf16" | "fp16"; anything else is a kiln::Error listing the choices.
MixedPrecision parse_mixed_precision(const std::string& name);
std::string mixed_precision_name(MixedPrecision mode);
// The dtype autocast computes in: kFloat (no autocast), kBFloat16, kHalf.
torch::ScalarType compute_dtype(MixedPrecision mode);

// kiln::Error when `mode` cannot autocast on `device`: libtorch 1.13's CPU autocast only knows bf16.
void check_mixed_precision_supported(torch::DeviceType device, MixedPrecision mode);

// Autocast for one device type (CPU or CUDA) at the mode's dtype while alive, like
// `with torch.autocast(device, dtype)`: restores the previous enabled flag and dtype on destruction
// and clears autocast's cache of casted weights when the outermost scope ends (the cache holds
// low-precision copies of fp32 weights, stale once the optimizer steps). MixedPrecision::No does
// nothing at all (an enclosing scope stays in force). Throws as check_mixed_precision_supported does.
// With libtorch 1.x, CPU autocast also runs group_norm and layer_norm in fp32 (see autocast.cpp):
// 1.13's CPU kernels reject a bf16 input with fp32 affine weights.
class AutocastGuard {
 public:
  AutocastGuard(torch::DeviceType device, MixedPrecision mode);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  torch::DeviceType device_;
  bool active_ = false;  // false for MixedPrecision::No: the destructor then touches nothing
  bool previous_enabled_ = false;
  torch::ScalarType previous_dtype_ = torch::kFloat;
};

// The whole autocast state of this thread for CPU and CUDA, captured when a checkpointed block
// runs forward so that its recomputation in backward (outside any AutocastGuard) computes in the
// same dtypes, as torch.utils.checkpoint does.
struct AutocastState {
  bool cpu_enabled = false;
  torch::ScalarType cpu_dtype = torch::kBFloat16;
  bool cuda_enabled = false;
  torch::ScalarType cuda_dtype = torch::kHalf;
  bool cache_enabled = true;
};
AutocastState current_autocast_state();

// Puts `state` in force while alive and restores the state it found (a nested scope: the weight
// cache is cleared when the outermost scope ends, as with AutocastGuard).
class AutocastStateGuard {
 public:
  explicit AutocastStateGuard(const AutocastState& state);
  ~AutocastStateGuard();
  AutocastStateGuard(const AutocastStateGuard&) = delete;
  AutocastStateGuard& operator=(const AutocastStateGuard&) = delete;

 private:
  AutocastState previous_;
};

}  // namespace kiln
