#include "train/sgd.h"

#include <torch/torch.h>

#include "util/error.h"

namespace kiln {

SGD::SGD(std::vector<NamedParameter> parameters, const SGDOptions& options)
    : Optimizer(std::move(parameters)), options_(options) {
  lr_ = options.lr;
}

void SGD::step() {
  torch::NoGradGuard no_grad;
  for (auto& p : parameters_) {
    const auto& grad = p.tensor.grad();
    if (!grad.defined()) continue;
    p.tensor.mul_(1 - lr_ * options_.weight_decay);
    auto direction = grad;
    if (options_.momentum != 0) {
      auto& buffer = momentum_[p.name];
      // torch: the first step's buffer is the gradient itself, later ones momentum·buf + grad.
      buffer = buffer.defined() ? buffer.mul_(options_.momentum).add_(grad) : grad.clone();
      direction = buffer;
    }
    p.tensor.add_(direction, -lr_);
  }
}

StateDict SGD::state() const {
  StateDict out;
  for (const auto& [name, buffer] : momentum_) out[name + ".momentum"] = buffer;
  return out;
}

void SGD::load_state(const StateDict& state) {
  std::map<std::string, torch::Tensor> momentum;
  for (const auto& p : parameters_) {
    const auto it = state.find(p.name + ".momentum");
    if (it == state.end()) continue;
    if (it->second.sizes() != p.tensor.sizes())
      throw Error("SGD state of " + p.name + " does not fit its shape");
    momentum[p.name] = it->second.clone();
  }
  if (momentum.size() != state.size())
    throw Error("SGD state holds parameters this optimizer does not train");
  momentum_ = std::move(momentum);
}

}  // namespace kiln
