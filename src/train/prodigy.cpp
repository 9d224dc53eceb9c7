#include "train/prodigy.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "util/error.h"

namespace kiln {

namespace {

constexpr const char* kD = "prodigy.d";
constexpr const char* kDMax = "prodigy.d_max";
constexpr const char* kDHat = "prodigy.d_hat";
constexpr const char* kNumerator = "prodigy.d_numerator";
constexpr const char* kDenom = "prodigy.d_denom";
constexpr const char* kK = "prodigy.k";

std::vector<NamedParameter> flatten_groups(const std::vector<ParameterGroup>& groups) {
  for (const auto& group : groups) {
    if (group.layer_scale != 1.0)
      throw Error("Prodigy has no per-group step scale (group '" + group.name +
                  "' asks for layer_scale != 1); use DAdaptAdam for that");
  }
  return qualified_parameters(groups, "Prodigy");
}

torch::Tensor scalar(double value) { return state_scalar(value); }

double read_scalar(const StateDict& state, const std::string& key) {
  return read_state_scalar(state, key, "Prodigy");
}

}  // namespace

Prodigy::Prodigy(std::vector<ParameterGroup> groups, const ProdigyOptions& options)
    : Optimizer(flatten_groups(groups)),
      options_(options),
      slots_(parameters_.size()),
      d_(options.d0),
      d_max_(options.d0),
      d_hat_(options.d0) {
  if (!(options.d0 > 0.0)) throw Error("Prodigy: d0 must be > 0");
  if (!(options.lr > 0.0)) throw Error("Prodigy: lr must be > 0");
  if (!(options.eps > 0.0)) throw Error("Prodigy: eps must be > 0");
  if (!(options.beta1 >= 0.0 && options.beta1 < 1.0) || !(options.beta2 >= 0.0 && options.beta2 < 1.0))
    throw Error("Prodigy: betas must lie in [0, 1)");
  if (options.slice_p < 1) throw Error("Prodigy: slice_p must be >= 1");
  lr_ = options.lr;
}

torch::Tensor Prodigy::sliced(const torch::Tensor& t) const {
  return t.flatten().slice(0, 0, std::numeric_limits<int64_t>::max(), options_.slice_p);
}

double Prodigy::beta3() const { return options_.beta3 < 0.0 ? std::sqrt(options_.beta2) : options_.beta3; }

void Prodigy::step() {
  torch::NoGradGuard no_grad;
  const auto& o = options_;
  const double beta3 = this->beta3();
  const double lr = lr_;
  const double k = static_cast<double>(k_);
  // The library's expressions operation for operation (Python's `x ** 0.5` is pow, not sqrt), so
  // that every double agrees with it to the bit.
  const double bias_correction =
      o.use_bias_correction ? std::pow(1 - std::pow(o.beta2, k + 1), 0.5) / (1 - std::pow(o.beta1, k + 1))
                            : 1.0;
  double d = d_, d_max = d_max_;
  const double dlr = d * lr * bias_correction;

  // Coupled L2 decay is applied to a copy: the library adds it into p.grad in place, which only
  // differs for callers that keep accumulating into the same gradient without zeroing it.
  auto effective_grad = [&](const NamedParameter& p) {
    const auto& grad = p.tensor.grad();
    return o.weight_decay != 0.0 && !o.decouple ? grad.add(p.tensor, o.weight_decay) : grad;
  };

  // The fixed form: decay the running numerator once, then add this step's sum (before the fix
  // the sum went into the already-decayed value term by term; the same single-process).
  const double d_numerator = d_numerator_ * beta3;
  double delta_numerator = 0.0, d_denom = 0.0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    if (!p.tensor.grad().defined()) continue;
    const auto grad = effective_grad(p);
    auto& slot = slots_[i];
    if (!slot.exp_avg_sq.defined()) {
      slot.s = torch::zeros_like(sliced(p.tensor));
      slot.p0 = p.tensor.any().item<bool>() ? sliced(p.tensor).clone() : torch::zeros({}, p.tensor.options());
      if (o.beta1 > 0.0) slot.exp_avg = torch::zeros_like(p.tensor);
      slot.exp_avg_sq = torch::zeros_like(p.tensor);
    }
    if (lr > 0.0) {
      // d/d0 rather than d keeps these sums away from the bottom of the float range.
      const auto sliced_grad = sliced(grad);
      delta_numerator +=
          (d / o.d0) * dlr * torch::dot(sliced_grad, slot.p0 - sliced(p.tensor)).item<double>();
      if (o.beta1 > 0.0) slot.exp_avg.mul_(o.beta1).add_(grad, d * (1 - o.beta1));
      slot.exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, d * d * (1 - o.beta2));
      slot.s.mul_(beta3).add_(sliced_grad, o.safeguard_warmup ? (d / o.d0) * d : (d / o.d0) * dlr);
      d_denom += slot.s.abs().sum().item<double>();
    }
  }

  // No gradient (or lr 0): the library returns before touching the parameters or d.
  if (d_denom == 0.0) return;
  const double global_d_numerator = d_numerator + delta_numerator;
  double d_hat = d;
  if (lr > 0.0) {
    d_hat = o.d_coef * global_d_numerator / d_denom;
    if (d == o.d0) d = std::max(d, d_hat);
    d_max = std::max(d_max, d_hat);
    d = std::min(d_max, d * o.growth_rate);
  }
  d_numerator_ = global_d_numerator;
  d_denom_ = d_denom;
  d_ = d;
  d_max_ = d_max;
  d_hat_ = d_hat;

  for (size_t i = 0; i < parameters_.size(); ++i) {
    auto& p = parameters_[i];
    if (!p.tensor.grad().defined()) continue;
    auto& slot = slots_[i];
    slot.step += 1;
    // eps scales with the new d; the step itself uses this step's (old) dlr.
    const auto denom = slot.exp_avg_sq.sqrt().add_(d * o.eps);
    if (o.weight_decay != 0.0 && o.decouple) p.tensor.add_(p.tensor, -o.weight_decay * dlr);
    if (o.beta1 > 0.0) {
      p.tensor.addcdiv_(slot.exp_avg, denom, -dlr);
    } else {
      p.tensor.addcdiv_(effective_grad(p), denom, -dlr * d);
    }
  }
  k_ += 1;
}

std::map<std::string, double> Prodigy::diagnostics() const {
  return {{"d", d_}, {"d_max", d_max_}, {"d_hat", d_hat_}, {"lr", lr_}, {"d*lr", d_ * lr_}};
}

StateDict Prodigy::state() const {
  StateDict out;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& slot = slots_[i];
    if (!slot.exp_avg_sq.defined()) continue;
    const auto& name = parameters_[i].name;
    if (slot.exp_avg.defined()) out[name + ".exp_avg"] = slot.exp_avg;
    out[name + ".exp_avg_sq"] = slot.exp_avg_sq;
    out[name + ".s"] = slot.s;
    out[name + ".p0"] = slot.p0;
    out[name + ".step"] = torch::scalar_tensor(slot.step, torch::kInt64);
  }
  out[kD] = scalar(d_);
  out[kDMax] = scalar(d_max_);
  out[kDHat] = scalar(d_hat_);
  out[kNumerator] = scalar(d_numerator_);
  out[kDenom] = scalar(d_denom_);
  out[kK] = scalar(static_cast<double>(k_));
  return out;
}

void Prodigy::load_state(const StateDict& state) {
  const bool momentum = options_.beta1 > 0.0;
  std::vector<Slot> slots(parameters_.size());
  size_t used = 0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    const auto avg = state.find(p.name + ".exp_avg");
    const auto sq = state.find(p.name + ".exp_avg_sq");
    const auto s = state.find(p.name + ".s");
    const auto p0 = state.find(p.name + ".p0");
    const auto step = state.find(p.name + ".step");
    const int present = (avg != state.end()) + (sq != state.end()) + (s != state.end()) +
                        (p0 != state.end()) + (step != state.end());
    if (present == 0) continue;  // never updated before the save
    if (present != (momentum ? 5 : 4) || (avg != state.end()) != momentum)
      throw Error("Prodigy state of " + p.name + " is incomplete or was saved with another beta1");
    const auto slice_sizes = sliced(p.tensor).sizes();
    if ((momentum && avg->second.sizes() != p.tensor.sizes()) || sq->second.sizes() != p.tensor.sizes() ||
        s->second.sizes() != slice_sizes || (p0->second.sizes() != slice_sizes && p0->second.dim() != 0))
      throw Error("Prodigy state of " + p.name + " does not fit the parameter's shape (or slice_p)");
    if (step->second.numel() != 1) throw Error("Prodigy state " + step->first + " is not a scalar");
    const auto options = p.tensor.options();
    auto& slot = slots[i];
    if (momentum) slot.exp_avg = avg->second.to(options).clone();
    slot.exp_avg_sq = sq->second.to(options).clone();
    slot.s = s->second.to(options).clone();
    slot.p0 = p0->second.to(options).clone();
    slot.step = step->second.item<int64_t>();
    used += present;
  }
  const double d = read_scalar(state, kD), d_max = read_scalar(state, kDMax),
               d_hat = read_scalar(state, kDHat);
  const double numerator = read_scalar(state, kNumerator), denom = read_scalar(state, kDenom);
  const double k = read_scalar(state, kK);
  if (!(d > 0.0) || !(d_max > 0.0) || !(k >= 0.0) || k != std::floor(k))
    throw Error("Prodigy state holds an invalid d, d_max or k");
  if (used + 6 != state.size())
    throw Error("Prodigy state holds entries for parameters this optimizer does not train");
  slots_ = std::move(slots);
  d_ = d;
  d_max_ = d_max;
  d_hat_ = d_hat;
  d_numerator_ = numerator;
  d_denom_ = denom;
  k_ = static_cast<int64_t>(k);
}

}  // namespace kiln
