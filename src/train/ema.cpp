#include "train/ema.h"

#include <torch/torch.h>

#include "util/error.h"

namespace kiln {

ExponentialMovingAverage::ExponentialMovingAverage(std::vector<NamedParameter> parameters, double decay)
    : parameters_(std::move(parameters)), decay_(decay) {
  torch::NoGradGuard no_grad;
  for (const auto& p : parameters_) average_.push_back(p.tensor.detach().clone());
}

void ExponentialMovingAverage::update() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters_.size(); ++i)
    average_[i].mul_(decay_).add_(parameters_[i].tensor, 1 - decay_);
}

void ExponentialMovingAverage::reset_to_weights() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters_.size(); ++i) average_[i].copy_(parameters_[i].tensor);
}

void ExponentialMovingAverage::swap_in() {
  torch::NoGradGuard no_grad;
  stash_.clear();
  for (size_t i = 0; i < parameters_.size(); ++i) {
    stash_.push_back(parameters_[i].tensor.detach().clone());
    parameters_[i].tensor.copy_(average_[i]);
  }
}

void ExponentialMovingAverage::swap_out() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < stash_.size(); ++i) parameters_[i].tensor.copy_(stash_[i]);
  stash_.clear();
}

StateDict ExponentialMovingAverage::state() const {
  StateDict out;
  for (size_t i = 0; i < parameters_.size(); ++i) out[parameters_[i].name] = average_[i];
  return out;
}

void ExponentialMovingAverage::load_state(const StateDict& state) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto it = state.find(parameters_[i].name);
    if (it == state.end()) throw Error("EMA state misses " + parameters_[i].name);
    average_[i].copy_(it->second);
  }
}

}  // namespace kiln
