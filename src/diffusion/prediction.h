// What a UNet predicts: the noise ε (SD 1.x) or the velocity v = α·ε − σ·x0 (Salimans & Ho 2022,
// "Progressive Distillation", §4; SD 2.x 768 models and v-prediction fine-tunes of SD 1.x). Samplers
// walk in ε; a v model's output is turned into ε first.
#pragma once
#include <torch/types.h>

#include <string>

namespace kiln {

enum class Prediction { Epsilon, V };
// "epsilon" | "v_prediction" (diffusers' prediction_type); others throw kiln::Error naming both.
Prediction parse_prediction(const std::string& name);
std::string prediction_name(Prediction prediction);

// ε from a v prediction for the UNet input `model_input` (the variance-preserving latents
// x = α·x0 + σ_vp·ε the UNet was given) at noise level `sigma` (σ/α, the k-diffusion σ of that
// call): α = 1/√(σ² + 1), σ_vp = σ·α, ε = α·v + σ_vp·x.
torch::Tensor epsilon_from_v(const torch::Tensor& v, const torch::Tensor& model_input, double sigma);

}  // namespace kiln
