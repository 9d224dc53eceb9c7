#include "train/lion.h"

#include <torch/torch.h>

#include "util/error.h"

namespace kiln {

Lion::Lion(std::vector<NamedParameter> parameters, const LionOptions& options)
    : Optimizer(std::move(parameters)), options_(options) {
  lr_ = options.lr;
  if (options.lr < 0) throw Error("Lion: learning rate must be ≥ 0");
  if (options.beta1 < 0 || options.beta1 > 1 || options.beta2 < 0 || options.beta2 > 1)
    throw Error("Lion: betas must lie in [0, 1]");
}

void Lion::step() {
  torch::NoGradGuard no_grad;
  for (auto& p : parameters_) {
    const auto& grad = p.tensor.grad();
    if (!grad.defined()) continue;
    auto& exp_avg = exp_avg_[p.name];
    if (!exp_avg.defined()) exp_avg = torch::zeros_like(p.tensor, torch::MemoryFormat::Preserve);
    // lion-pytorch's update_fn op for op (double scalars, in-place), so results agree to the bit.
    p.tensor.mul_(1 - lr_ * options_.weight_decay);
    const auto update = exp_avg.clone().mul_(options_.beta1).add(grad, 1 - options_.beta1).sign_();
    p.tensor.add_(update, -lr_);
    exp_avg.mul_(options_.beta2).add_(grad, 1 - options_.beta2);
  }
}

StateDict Lion::state() const {
  StateDict out;
  for (const auto& [name, exp_avg] : exp_avg_) out[name + ".exp_avg"] = exp_avg;
  return out;
}

void Lion::load_state(const StateDict& state) {
  std::map<std::string, torch::Tensor> exp_avg;
  for (const auto& p : parameters_) {
    const auto it = state.find(p.name + ".exp_avg");
    if (it == state.end()) continue;  // never updated before the save
    if (it->second.sizes() != p.tensor.sizes())
      throw Error("Lion state of " + p.name + " does not fit the parameter's shape");
    exp_avg[p.name] = it->second.to(p.tensor.options()).clone();
  }
  size_t expected = 0;
  for (const auto& [name, tensor] : state) expected += name.ends_with(".exp_avg") ? 1 : 0;
  if (expected != exp_avg.size()) throw Error("Lion state holds parameters this optimizer does not train");
  exp_avg_ = std::move(exp_avg);
}

}  // namespace kiln
