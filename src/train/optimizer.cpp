#include "train/optimizer.h"

#include <torch/torch.h>

#include <cmath>
#include <set>

#include "util/error.h"

namespace kiln {

void Optimizer::zero_grad() {
  // set_to_none, as torch ≥ 2 defaults to: a part that gets no gradient keeps no stale one.
  for (auto& p : parameters_) p.tensor.mutable_grad() = torch::Tensor();
}

std::vector<NamedParameter> qualified_parameters(const std::vector<ParameterGroup>& groups,
                                                 const std::string& optimizer) {
  std::vector<NamedParameter> out;
  std::set<std::string> seen;
  for (const auto& group : groups) {
    for (const auto& p : group.parameters) {
      auto name = group.name.empty() ? p.name : group.name + "." + p.name;
      if (!seen.insert(name).second) throw Error(optimizer + ": parameter " + name + " is given twice");
      out.push_back({std::move(name), p.tensor});
    }
  }
  return out;
}

torch::Tensor state_scalar(double value) { return torch::scalar_tensor(value, torch::kFloat64); }

double read_state_scalar(const StateDict& state, const std::string& key, const std::string& optimizer) {
  const auto it = state.find(key);
  if (it == state.end()) throw Error(optimizer + " state lacks " + key);
  if (it->second.numel() != 1) throw Error(optimizer + " state entry " + key + " is not a scalar");
  return it->second.item<double>();
}

AdamW::AdamW(std::vector<NamedParameter> parameters, const AdamWOptions& options)
    : Optimizer(std::move(parameters)), options_(options) {
  lr_ = options.lr;
}

void AdamW::step() {
  torch::NoGradGuard no_grad;
  for (auto& p : parameters_) {
    const auto& grad = p.tensor.grad();
    if (!grad.defined()) continue;
    auto& slot = slots_[p.name];
    if (!slot.exp_avg.defined()) {
      slot.exp_avg = torch::zeros_like(p.tensor, torch::MemoryFormat::Preserve);
      slot.exp_avg_sq = torch::zeros_like(p.tensor, torch::MemoryFormat::Preserve);
    }
    slot.step += 1;
    // The order and form of torch 1.13's _single_tensor_adamw, so results agree to the bit (torch 2
    // writes the first moment as a lerp, which can differ in the last ulp).
    p.tensor.mul_(1 - lr_ * options_.weight_decay);
    slot.exp_avg.mul_(options_.beta1).add_(grad, 1 - options_.beta1);
    slot.exp_avg_sq.mul_(options_.beta2).addcmul_(grad, grad, 1 - options_.beta2);
    const double step = static_cast<double>(slot.step);
    const double bias_correction1 = 1 - std::pow(options_.beta1, step);
    const double bias_correction2 = 1 - std::pow(options_.beta2, step);
    const double step_size = lr_ / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);
    const auto denom = (slot.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(options_.eps);
    p.tensor.addcdiv_(slot.exp_avg, denom, -step_size);
  }
}

StateDict AdamW::state() const {
  StateDict out;
  for (const auto& [name, slot] : slots_) {
    out[name + ".exp_avg"] = slot.exp_avg;
    out[name + ".exp_avg_sq"] = slot.exp_avg_sq;
    out[name + ".step"] = torch::tensor(slot.step, torch::kInt64);
  }
  return out;
}

void AdamW::load_state(const StateDict& state) {
  std::map<std::string, Slot> slots;
  for (const auto& p : parameters_) {
    const auto avg = state.find(p.name + ".exp_avg");
    if (avg == state.end()) continue;  // never updated before the save
    const auto sq = state.find(p.name + ".exp_avg_sq"), step = state.find(p.name + ".step");
    if (sq == state.end() || step == state.end()) throw Error("AdamW state of " + p.name + " is incomplete");
    if (avg->second.sizes() != p.tensor.sizes() || sq->second.sizes() != p.tensor.sizes())
      throw Error("AdamW state of " + p.name + " does not fit the parameter's shape");
    slots[p.name] = Slot{avg->second.to(p.tensor.options()).clone(),
                         sq->second.to(p.tensor.options()).clone(), step->second.item<int64_t>()};
  }
  size_t expected = 0;
  for (const auto& [name, tensor] : state) expected += name.ends_with(".exp_avg") ? 1 : 0;
  if (expected != slots.size()) throw Error("AdamW state holds parameters this optimizer does not train");
  slots_ = std::move(slots);
}

}  // namespace kiln
