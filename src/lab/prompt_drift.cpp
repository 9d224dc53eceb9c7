#include "lab/prompt_drift.h"

#include <torch/torch.h>

#include "util/error.h"

namespace kiln {

std::vector<torch::Tensor> encode_prompts(Txt2Img& txt2img, const std::vector<std::string>& prompts,
                                          int64_t clip_skip) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> out;
  for (const auto& prompt : prompts) out.push_back(txt2img.encode_prompt(prompt, clip_skip).to(torch::kCPU, torch::kFloat32));
  return out;
}

double prompt_drift(const std::vector<torch::Tensor>& now, const std::vector<torch::Tensor>& base) {
  if (now.size() != base.size())
    throw Error("prompt_drift: " + std::to_string(now.size()) + " prompts against " + std::to_string(base.size()));
  if (now.empty()) return 0.0;
  constexpr int64_t kChunk = 77;
  double total = 0;
  for (size_t i = 0; i < now.size(); ++i) {
    if (!now[i].sizes().equals(base[i].sizes()) || now[i].dim() != 3)
      throw Error("prompt_drift: conditioning shapes differ for prompt " + std::to_string(i));
    const auto tokens = now[i].size(1);
    auto keep = torch::ones({tokens}, torch::kBool);
    keep.index_put_({torch::arange(0, tokens, kChunk)}, false);
    const auto a = now[i].to(torch::kFloat64).index({torch::indexing::Slice(), keep});
    const auto b = base[i].to(torch::kFloat64).index({torch::indexing::Slice(), keep});
    const double reference = b.norm().item<double>();
    total += reference > 0 ? (a - b).norm().item<double>() / reference : 0.0;
  }
  return total / static_cast<double>(now.size());
}

}  // namespace kiln
