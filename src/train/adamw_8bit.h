// bitsandbytes' AdamW8bit (specs §1): Adam moments kept as 8-bit codes of the dynamic quantisation
// map with one float32 absmax per block, so the optimizer state costs ~2 bytes per parameter instead
// of 8. The update follows the CUDA kernel (kOptimizerStatic8bit2StateBlockwise) rather than the
// Triton reference: weight decay after the Adam step, NaN/Inf gradients reset their element's state.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "train/optimizer.h"

namespace kiln {

struct AdamW8bitOptions {
  double lr = 1e-3;  // bitsandbytes' default; kiln passes the run's own
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  int64_t block_size = 256;  // bitsandbytes ≥ 0.44; older versions (and their saved states) used 2048
  // Parameters with fewer elements keep fp32 moments (bitsandbytes' 32-bit path): their state is
  // small, and 8-bit codes would cost more precision than they save memory.
  int64_t min_8bit_size = 4096;
};

// bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): 256 float32 values,
// ascending, in the float32 arithmetic bitsandbytes runs under current PyTorch on x86-64, so every
// value matches to the bit (a float64 derivation is up to 2 ulps off in ~70 entries).
torch::Tensor dynamic_quantization_map(bool is_signed);

struct BlockQuantized {
  torch::Tensor codes;   // uint8, the input's shape
  torch::Tensor absmax;  // float32 [ceil(numel / block_size)]
  std::vector<int64_t> shape;
};

// Blocks are consecutive runs of the flattened tensor (the last may be partial); each element gets
// the code nearest to x / absmax(block), an exact tie going to the even code as the CUDA kernel's
// binary search resolves it. An all-zero block keeps absmax 0 (and dequantises to 0).
BlockQuantized quantize_blockwise(const torch::Tensor& x, const torch::Tensor& map, int64_t block_size);
torch::Tensor dequantize_blockwise(const BlockQuantized& q, const torch::Tensor& map, int64_t block_size);

// State: "<param>.state1"/".state2" (uint8 codes, or float32 moments on the 32-bit path),
// "<param>.absmax1"/".absmax2" (8-bit path only) and "<param>.step", bitsandbytes' own names.
class AdamW8bit : public Optimizer {
 public:
  AdamW8bit(std::vector<NamedParameter> parameters, const AdamW8bitOptions& options = {});
  void step() override;
  StateDict state() const override;
  void load_state(const StateDict& state) override;
  // Bytes held by the moment codes/values and the absmax vectors over all parameters.
  int64_t state_bytes() const;

 private:
  struct Slot {
    bool quantized = false;
    torch::Tensor state1, state2;    // m, v: uint8 codes (quantized) or float32
    torch::Tensor absmax1, absmax2;  // quantized only
    int64_t step = 0;
  };
  void step_quantized(torch::Tensor& param, const torch::Tensor& grad, Slot& slot) const;
  void step_32bit(torch::Tensor& param, const torch::Tensor& grad, Slot& slot) const;

  AdamW8bitOptions options_;
  torch::Tensor map1_, map2_;          // signed (m) and unsigned (v) dynamic maps
  std::map<std::string, Slot> slots_;  // created on a parameter's first update, as bitsandbytes does
};

}  // namespace kiln
