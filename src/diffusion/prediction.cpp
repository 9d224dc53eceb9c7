#include "diffusion/prediction.h"

#include <torch/torch.h>

#include <cmath>

#include "util/error.h"

namespace kiln {

Prediction parse_prediction(const std::string& name) {
  if (name == "epsilon") return Prediction::Epsilon;
  if (name == "v_prediction") return Prediction::V;
  throw Error("unknown prediction type '" + name + "' (epsilon, v_prediction)");
}

std::string prediction_name(Prediction prediction) {
  return prediction == Prediction::Epsilon ? "epsilon" : "v_prediction";
}

torch::Tensor epsilon_from_v(const torch::Tensor& v, const torch::Tensor& model_input, double sigma) {
  const double alpha = 1.0 / std::sqrt(sigma * sigma + 1.0);
  return alpha * v + (sigma * alpha) * model_input;
}

}  // namespace kiln
