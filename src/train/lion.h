// Lion (Chen et al. 2023; specs §2.3), as lion-pytorch's update_fn: decoupled decay with the current
// learning rate, a sign step from the β1 interpolation, then the β2 momentum update.
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "train/optimizer.h"

namespace kiln {

struct LionOptions {
  double lr = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double weight_decay = 0.0;
};

// State: "<param>.exp_avg" per parameter that has been updated.
class Lion : public Optimizer {
 public:
  Lion(std::vector<NamedParameter> parameters, const LionOptions& options = {});
  void step() override;
  StateDict state() const override;
  void load_state(const StateDict& state) override;

 private:
  LionOptions options_;
  std::map<std::string, torch::Tensor> exp_avg_;  // created on a parameter's first update
};

}  // namespace kiln
