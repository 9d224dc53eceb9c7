#include "train/dadapt_adam.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "util/error.h"

namespace kiln {

namespace {

constexpr const char* kD = "dadapt_adam.d";
constexpr const char* kDHat = "dadapt_adam.d_hat";
constexpr const char* kNumerator = "dadapt_adam.numerator_weighted";
constexpr const char* kK = "dadapt_adam.k";

std::vector<NamedParameter> flatten_groups(const std::vector<ParameterGroup>& groups) {
  for (const auto& group : groups) {
    if (!(group.layer_scale >= 0.0) || !std::isfinite(group.layer_scale))
      throw Error("DAdaptAdam: layer_scale of group '" + group.name + "' must be finite and >= 0");
  }
  return qualified_parameters(groups, "DAdaptAdam");
}

std::vector<double> layer_scales(const std::vector<ParameterGroup>& groups) {
  std::vector<double> out;
  for (const auto& group : groups) out.insert(out.end(), group.parameters.size(), group.layer_scale);
  return out;
}

torch::Tensor scalar(double value) { return state_scalar(value); }

double read_scalar(const StateDict& state, const std::string& key) {
  return read_state_scalar(state, key, "DAdaptAdam");
}

}  // namespace

DAdaptAdam::DAdaptAdam(std::vector<ParameterGroup> groups, const DAdaptAdamOptions& options)
    : Optimizer(flatten_groups(groups)),
      options_(options),
      layer_scales_(layer_scales(groups)),
      slots_(parameters_.size()),
      d_(options.d0),
      d_hat_(options.d0) {
  if (!(options.lr >= 0.0)) throw Error("DAdaptAdam: lr must be >= 0");
  if (!(options.eps >= 0.0)) throw Error("DAdaptAdam: eps must be >= 0");
  if (!(options.beta1 >= 0.0 && options.beta1 < 1.0) || !(options.beta2 >= 0.0 && options.beta2 < 1.0))
    throw Error("DAdaptAdam: betas must lie in [0, 1)");
  if (!(options.d0 > 0.0)) throw Error("DAdaptAdam: d0 must be > 0");
  lr_ = options.lr;
}

void DAdaptAdam::step() {
  torch::NoGradGuard no_grad;
  const auto& o = options_;
  const double lr = lr_;
  const double k = static_cast<double>(k_);
  // The library's expressions operation for operation (Python's `x ** 0.5` is pow, not sqrt), so
  // that every double agrees with it to the bit.
  const double bias_correction =
      o.use_bias_correction ? std::pow(1 - std::pow(o.beta2, k + 1), 0.5) / (1 - std::pow(o.beta1, k + 1))
                            : 1.0;
  const double dlr = d_ * lr * bias_correction;
  const double sqrt_beta2 = std::pow(o.beta2, 0.5);

  // Coupled L2 decay is applied to a copy: the library adds it into p.grad in place, which only
  // differs for callers that keep accumulating into the same gradient without zeroing it.
  auto effective_grad = [&](const NamedParameter& p) {
    const auto& grad = p.tensor.grad();
    return o.weight_decay != 0.0 && !o.decouple ? grad.add(p.tensor, o.weight_decay) : grad;
  };

  double numerator_acum = 0.0, sk_l1 = 0.0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    if (!p.tensor.grad().defined()) continue;
    const auto grad = effective_grad(p);
    auto& slot = slots_[i];
    if (!slot.exp_avg.defined()) {
      slot.s = torch::zeros_like(p.tensor);
      slot.exp_avg = torch::zeros_like(p.tensor);
      slot.exp_avg_sq = torch::zeros_like(p.tensor);
    }
    if (lr > 0.0) {
      const double r = layer_scales_[i];
      // Uses s and v from before this step's update, as the library does.
      const auto denom = slot.exp_avg_sq.sqrt().add_(o.eps);
      numerator_acum += r * dlr * torch::dot(grad.flatten(), slot.s.div(denom).flatten()).item<double>();
      slot.exp_avg.mul_(o.beta1).add_(grad, r * dlr * (1 - o.beta1));
      slot.exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, 1 - o.beta2);
      slot.s.mul_(sqrt_beta2).add_(grad, dlr * (1 - sqrt_beta2));
      sk_l1 += r * slot.s.abs().sum().item<double>();
    }
  }

  const double numerator_weighted = sqrt_beta2 * numerator_weighted_ + (1 - sqrt_beta2) * numerator_acum;
  // No gradient (or lr 0): the library returns before touching the parameters or d.
  if (sk_l1 == 0.0) return;
  double d = d_, d_hat = d_;
  if (lr > 0.0) {
    d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1);
    d = std::max(d, std::min(d_hat, d * o.growth_rate));
  }
  numerator_weighted_ = numerator_weighted;
  d_ = d;
  d_hat_ = d_hat;

  // The new d takes effect at the next step; this one moves by m, which already holds r*dlr.
  for (size_t i = 0; i < parameters_.size(); ++i) {
    auto& p = parameters_[i];
    if (!p.tensor.grad().defined()) continue;
    auto& slot = slots_[i];
    slot.step += 1;
    const auto denom = slot.exp_avg_sq.sqrt().add_(o.eps);
    if (o.weight_decay != 0.0 && o.decouple) p.tensor.add_(p.tensor, -o.weight_decay * dlr);
    p.tensor.addcdiv_(slot.exp_avg, denom, -1);
  }
  k_ += 1;
}

std::map<std::string, double> DAdaptAdam::diagnostics() const {
  return {{"d", d_}, {"d_hat", d_hat_}, {"lr", lr_}, {"d*lr", d_ * lr_}};
}

StateDict DAdaptAdam::state() const {
  StateDict out;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& slot = slots_[i];
    if (!slot.exp_avg.defined()) continue;
    const auto& name = parameters_[i].name;
    out[name + ".exp_avg"] = slot.exp_avg;
    out[name + ".exp_avg_sq"] = slot.exp_avg_sq;
    out[name + ".s"] = slot.s;
    out[name + ".step"] = torch::scalar_tensor(slot.step, torch::kInt64);
  }
  out[kD] = scalar(d_);
  out[kDHat] = scalar(d_hat_);
  out[kNumerator] = scalar(numerator_weighted_);
  out[kK] = scalar(static_cast<double>(k_));
  return out;
}

void DAdaptAdam::load_state(const StateDict& state) {
  std::vector<Slot> slots(parameters_.size());
  size_t used = 0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    const auto avg = state.find(p.name + ".exp_avg");
    const auto sq = state.find(p.name + ".exp_avg_sq");
    const auto s = state.find(p.name + ".s");
    const auto step = state.find(p.name + ".step");
    const int present =
        (avg != state.end()) + (sq != state.end()) + (s != state.end()) + (step != state.end());
    if (present == 0) continue;  // never updated before the save
    if (present != 4) throw Error("DAdaptAdam state of " + p.name + " is incomplete");
    for (const auto& it : {avg, sq, s})
      if (it->second.sizes() != p.tensor.sizes())
        throw Error("DAdaptAdam state " + it->first + " does not fit the parameter's shape");
    if (step->second.numel() != 1) throw Error("DAdaptAdam state " + step->first + " is not a scalar");
    const auto options = p.tensor.options();
    slots[i] = Slot{avg->second.to(options).clone(), sq->second.to(options).clone(),
                    s->second.to(options).clone(), step->second.item<int64_t>()};
    used += 4;
  }
  const double d = read_scalar(state, kD), d_hat = read_scalar(state, kDHat);
  const double numerator = read_scalar(state, kNumerator), k = read_scalar(state, kK);
  if (!(d > 0.0) || !(k >= 0.0) || k != std::floor(k))
    throw Error("DAdaptAdam state holds an invalid d or k");
  if (used + 4 != state.size())
    throw Error("DAdaptAdam state holds entries for parameters this optimizer does not train");
  slots_ = std::move(slots);
  d_ = d;
  d_hat_ = d_hat;
  numerator_weighted_ = numerator;
  k_ = static_cast<int64_t>(k);
}

}  // namespace kiln
