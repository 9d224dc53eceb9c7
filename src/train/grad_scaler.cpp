#include "train/grad_scaler.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "util/error.h"

namespace kiln {

GradScaler::GradScaler(GradScalerOptions options) : options_(options), scale_(options.init_scale) {
  TORCH_CHECK(options_.init_scale > 0 && std::isfinite(options_.init_scale),
              "GradScaler: init_scale must be > 0");
  TORCH_CHECK(options_.growth_factor > 1.0, "GradScaler: growth_factor must be > 1");
  TORCH_CHECK(options_.backoff_factor > 0.0 && options_.backoff_factor < 1.0,
              "GradScaler: backoff_factor must be in (0, 1)");
  TORCH_CHECK(options_.growth_interval > 0, "GradScaler: growth_interval must be > 0");
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) const {
  if (!enabled()) return loss;
  return loss * scale_;
}

bool GradScaler::unscale(const std::vector<torch::Tensor>& parameters) {
  if (!enabled()) return true;
  // One flag on the device, read once at the end: a read per tensor would sync CUDA per tensor.
  torch::Tensor found_nonfinite;
  for (const auto& p : parameters) {
    auto grad = p.grad();
    if (!grad.defined()) continue;
    // The scales this class produces are powers of two (for power-of-two factors), so the
    // division is exact; PyTorch multiplies by the fp32 reciprocal, the same for such scales.
    grad.div_(scale_);
    auto bad = grad.isfinite().logical_not().any();
    found_nonfinite = found_nonfinite.defined() ? found_nonfinite.logical_or(bad) : bad;
  }
  return !found_nonfinite.defined() || !found_nonfinite.item<bool>();
}

void GradScaler::update(bool grads_were_finite) {
  if (!enabled()) return;
  if (!grads_were_finite) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
    return;
  }
  // >= rather than PyTorch's ==: a run resumed with a shorter interval still grows.
  if (++growth_tracker_ >= options_.growth_interval) {
    const double grown = scale_ * options_.growth_factor;
    // PyTorch keeps the scale in fp32 and never grows it to inf; the loss is scaled in fp32 too.
    if (grown <= std::numeric_limits<float>::max()) scale_ = grown;
    growth_tracker_ = 0;
  }
}

double GradScaler::current_scale() const { return enabled() ? scale_ : 1.0; }

StateDict GradScaler::state() const {
  return {{"scale", torch::tensor(scale_, torch::kDouble)},
          {"growth_tracker", torch::tensor(growth_tracker_, torch::kLong)}};
}

void GradScaler::load_state(const StateDict& state) {
  for (const char* key : {"scale", "growth_tracker"})
    if (!state.count(key)) throw Error(std::string("GradScaler state misses ") + key);
  const double scale = state.at("scale").item<double>();
  const int64_t tracker = state.at("growth_tracker").item<int64_t>();
  if (!(scale > 0) || !std::isfinite(scale)) throw Error("GradScaler state: scale must be finite and > 0");
  if (tracker < 0) throw Error("GradScaler state: growth_tracker " + std::to_string(tracker) + " < 0");
  scale_ = scale;
  growth_tracker_ = tracker;
}

}  // namespace kiln
