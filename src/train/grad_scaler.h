// Dynamic loss scaling for fp16 training, torch.cuda.amp.GradScaler's algorithm. fp16 gradients of
// small losses underflow to zero; multiplying the loss by a large scale keeps them representable,
// and the gradients are divided by the same scale before the optimizer sees them. When a step's
// gradients overflow (inf/NaN) the step is skipped and the scale backs off; after `growth_interval`
// clean steps in a row it grows again. bf16 has fp32's exponent range and needs none of this.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "io/safetensors.h"

namespace kiln {

struct GradScalerOptions {
  double init_scale = 65536.0;     // 2^16, PyTorch's default
  double growth_factor = 2.0;      // scale *= this after growth_interval finite steps in a row
  double backoff_factor = 0.5;     // scale *= this after a step with inf/NaN gradients
  int64_t growth_interval = 2000;  // finite steps in a row before the scale grows
  bool enabled = true;             // false: every method is the identity (fp32 and bf16 runs)
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  // loss * scale (the loss itself when disabled).
  torch::Tensor scale(const torch::Tensor& loss) const;
  // Divides every parameter's grad by the scale in place (parameters without a grad are skipped);
  // false when any grad holds inf/NaN: the optimizer step must then be skipped. Disabled: true.
  bool unscale(const std::vector<torch::Tensor>& parameters);
  // Once per optimizer step, with unscale's answer: backoff on overflow (the growth counter restarts),
  // growth after growth_interval finite steps in a row.
  void update(bool grads_were_finite);

  double current_scale() const;  // 1 when disabled, as PyTorch's get_scale()
  int64_t growth_tracker() const { return growth_tracker_; }
  bool enabled() const { return options_.enabled; }

  // "scale" (f64 []) and "growth_tracker" (i64 []): with them a resumed run scales exactly as the
  // interrupted one would have.
  StateDict state() const;
  void load_state(const StateDict& state);

 private:
  GradScalerOptions options_;
  double scale_;
  int64_t growth_tracker_ = 0;  // finite steps in a row since the last growth or backoff
};

}  // namespace kiln
