// Optimizers over named parameters, one instance per trained part (text encoder, UNet), with their
// state as named tensors so that checkpoints can store it beside the weights and a resumed run
// continues bit for bit. kiln implements the update rules itself (here AdamW exactly as torch's
// single-tensor path) so that every optimizer's state has the same portable form.
#pragma once
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace kiln {

struct NamedParameter {
  std::string name;
  torch::Tensor tensor;  // requires_grad; its .grad() is read by step()
};

class Optimizer {
 public:
  explicit Optimizer(std::vector<NamedParameter> parameters) : parameters_(std::move(parameters)) {}
  virtual ~Optimizer() = default;
  // One update from the parameters' current gradients (parameters without a gradient are skipped,
  // as torch does).
  virtual void step() = 0;
  void zero_grad();
  double learning_rate() const { return lr_; }
  void set_learning_rate(double lr) { lr_ = lr; }
  // Everything step() depends on besides the parameters, as "<param>.<slot>" tensors (plus
  // optimizer-wide scalars); load_state throws kiln::Error when names or shapes do not fit.
  virtual StateDict state() const = 0;
  virtual void load_state(const StateDict& state) = 0;
  const std::vector<NamedParameter>& parameters() const { return parameters_; }
  // Values worth logging besides the learning rate (e.g. D-Adaptation's d), by name.
  virtual std::map<std::string, double> diagnostics() const { return {}; }

 protected:
  std::vector<NamedParameter> parameters_;
  double lr_ = 1e-4;
};

// Parameters that share one optimizer but differ in scale (D-Adaptation/Prodigy estimate one d
// over all groups; kiln gives the text encoder and the UNet one group each).
struct ParameterGroup {
  std::string name;  // "text_encoder" | "unet"
  std::vector<NamedParameter> parameters;
  double layer_scale = 1.0;  // multiplies this group's step (dadaptation's `layer_scale`)
};

// The groups' parameters as one list named "<group>.<name>" (the bare name for an unnamed group);
// a name given twice is a kiln::Error naming `optimizer`.
std::vector<NamedParameter> qualified_parameters(const std::vector<ParameterGroup>& groups,
                                                 const std::string& optimizer);
// Optimizer-wide scalars travel as 0-dim float64 tensors, so a resumed run sees the very doubles
// the interrupted one had.
torch::Tensor state_scalar(double value);
double read_state_scalar(const StateDict& state, const std::string& key, const std::string& optimizer);

struct AdamWOptions {
  double lr = 1e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
};

// torch.optim.AdamW (foreach=False, amsgrad=False): decoupled weight decay p ← p·(1 − lr·wd), then
// Adam with bias correction. Bit-identical to torch's single-tensor implementation.
class AdamW : public Optimizer {
 public:
  AdamW(std::vector<NamedParameter> parameters, const AdamWOptions& options);
  void step() override;
  StateDict state() const override;
  void load_state(const StateDict& state) override;

 private:
  struct Slot {
    torch::Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
  };
  AdamWOptions options_;
  std::map<std::string, Slot> slots_;  // created on a parameter's first update, as torch does
};

}  // namespace kiln
