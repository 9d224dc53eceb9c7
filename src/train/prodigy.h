// Prodigy (Mishchenko & Defazio 2023; konstmish/prodigy `prodigyopt` 1.1.x, with the Dec-2024
// numerator fix): D-Adaptation Adam whose d estimate weighs the distance travelled from the
// initial weights, one d shared by all parameter groups. The base class's learning rate is the
// multiplier on d (leave it at 1; warm-up schedules scale it).
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "train/optimizer.h"

namespace kiln {

struct ProdigyOptions {
  double lr = 1.0;  // multiplier on d; becomes the base class's learning rate
  double beta1 = 0.9;
  double beta2 = 0.999;
  double beta3 = -1.0;  // negative: sqrt(beta2), the library's `beta3=None`
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decouple = true;
  bool use_bias_correction = false;
  bool safeguard_warmup = false;
  double d0 = 1e-6;
  double d_coef = 1.0;
  double growth_rate = std::numeric_limits<double>::infinity();
  int64_t slice_p = 1;  // estimate d from every slice_p-th element only (saves the memory of s, p0)
};

// Parameters are named "<group>.<name>" (the bare name when the group has none), in the groups'
// order; state() keys are those names with a slot suffix, plus the "prodigy.*" scalars. The
// estimate's global sums are accumulated in float64 in that order, as the library does with
// `.item()`. Prodigy has no per-group scale: a group whose layer_scale is not 1 is refused.
class Prodigy : public Optimizer {
 public:
  Prodigy(std::vector<ParameterGroup> groups, const ProdigyOptions& options);
  void step() override;
  StateDict state() const override;
  void load_state(const StateDict& state) override;
  // d, d_max, the latest estimate d_hat, the multiplier lr and the effective step size d*lr.
  std::map<std::string, double> diagnostics() const override;

  double d() const { return d_; }
  double d_max() const { return d_max_; }
  double d_hat() const { return d_hat_; }
  double d_numerator() const { return d_numerator_; }
  double d_denom() const { return d_denom_; }
  int64_t k() const { return k_; }  // completed steps that updated the parameters

 private:
  struct Slot {
    torch::Tensor exp_avg;  // absent when beta1 == 0
    torch::Tensor exp_avg_sq;
    torch::Tensor s;   // over the sliced elements
    torch::Tensor p0;  // the sliced initial weights; a 0-dim zero for an all-zero parameter
    int64_t step = 0;
  };
  torch::Tensor sliced(const torch::Tensor& t) const;
  double beta3() const;

  ProdigyOptions options_;
  std::vector<Slot> slots_;  // parallel to parameters_; empty until a parameter's first update
  double d_;
  double d_max_;
  double d_hat_;
  double d_numerator_ = 0.0;
  double d_denom_ = 0.0;
  int64_t k_ = 0;
};

}  // namespace kiln
