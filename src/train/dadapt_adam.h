// D-Adaptation Adam (Defazio & Mishchenko 2023; facebookresearch/dadaptation 3.2, `DAdaptAdam`):
// Adam whose step size d is estimated from the run itself, one d shared by all parameter groups.
// The base class's learning rate is the multiplier on d (leave it at 1; warm-up schedules scale
// it), and each group's `layer_scale` scales that group's step and its weight in the estimate, the
// library's way of giving the text encoder a smaller step than the UNet.
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

struct DAdaptAdamOptions {
  double lr = 1.0;  // multiplier on d; becomes the base class's learning rate
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double d0 = 1e-6;                                              // initial d
  double growth_rate = std::numeric_limits<double>::infinity();  // cap on d's growth per step
  bool decouple = true;  // AdamW-style decay (the library defaults to coupled L2; kiln to AdamW's)
  bool use_bias_correction = false;
};

// Parameters are named "<group>.<name>" (the bare name when the group has none), in the groups'
// order; state() keys are those names with a slot suffix, plus the "dadapt_adam.*" scalars. The
// estimate's global sums are accumulated in float64 in that order, one float32 reduction per
// tensor, exactly as the library does with `.item()`; give the groups in the reference's order
// (text encoder, then UNet, each in named_parameters() order) to reproduce its d.
class DAdaptAdam : public Optimizer {
 public:
  DAdaptAdam(std::vector<ParameterGroup> groups, const DAdaptAdamOptions& options);
  void step() override;
  StateDict state() const override;
  void load_state(const StateDict& state) override;
  // d, the latest estimate d_hat, the multiplier lr and the effective step size d*lr.
  std::map<std::string, double> diagnostics() const override;

  double d() const { return d_; }
  double d_hat() const { return d_hat_; }
  double numerator_weighted() const { return numerator_weighted_; }
  int64_t k() const { return k_; }  // completed steps that updated the parameters

 private:
  struct Slot {
    torch::Tensor exp_avg, exp_avg_sq, s;
    int64_t step = 0;
  };
  DAdaptAdamOptions options_;
  std::vector<double> layer_scales_;  // per parameter, parallel to parameters_
  std::vector<Slot> slots_;           // parallel to parameters_; empty until a parameter's first update
  double d_;
  double d_hat_;
  double numerator_weighted_ = 0.0;
  int64_t k_ = 0;
};

}  // namespace kiln
