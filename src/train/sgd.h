// Plain SGD with momentum and decoupled weight decay, kept as the simplest baseline optimizer.
#pragma once
#include "train/optimizer.h"

namespace kiln {

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0.0;  // kiln passes the part's beta1
  double weight_decay = 0.0;
};

// torch.optim.SGD (dampening 0, no Nesterov) with the weight decay applied as p ← p·(1 − lr·wd).
// State: "<param>.momentum" once momentum is on and the parameter has been updated.
class SGD : public Optimizer {
 public:
  SGD(std::vector<NamedParameter> parameters, const SGDOptions& options);
  void step() override;
  StateDict state() const override;
  void load_state(const StateDict& state) override;

 private:
  SGDOptions options_;
  std::map<std::string, torch::Tensor> momentum_;
};

}  // namespace kiln
