// An exponential moving average of the trained weights (EveryDream2's and diffusers' EMA):
// ema ← decay·ema + (1 − decay)·weights after every optimizer step. Checkpoints of the average are
// written beside the raw ones; it often keeps a long run from drifting into a burnt look.
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

#include "io/safetensors.h"
#include "train/optimizer.h"

namespace kiln {

class ExponentialMovingAverage {
 public:
  ExponentialMovingAverage(std::vector<NamedParameter> parameters, double decay);
  void update();
  // Restarts the average at the current weights (an average switched on when a run resumes).
  void reset_to_weights();
  // Puts the averages into the parameters (swap_in) and the trained values back (swap_out).
  void swap_in();
  void swap_out();
  StateDict state() const;  // "<param>" -> average
  void load_state(const StateDict& state);

 private:
  std::vector<NamedParameter> parameters_;
  std::vector<torch::Tensor> average_, stash_;
  double decay_;
};

}  // namespace kiln
