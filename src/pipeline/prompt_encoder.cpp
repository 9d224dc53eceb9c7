#include "pipeline/prompt_encoder.h"

#include <torch/torch.h>

#include <algorithm>

#include "models/device.h"
#include "util/error.h"

namespace kiln {

EmphasisMode parse_emphasis_mode(const std::string& name) {
  if (name == "original") return EmphasisMode::Original;
  if (name == "no_norm") return EmphasisMode::NoNorm;
  if (name == "off") return EmphasisMode::Off;
  throw Error("unknown emphasis mode '" + name + "' (original, no_norm, off)");
}

PromptEncoder::PromptEncoder(CLIPTextModel text_encoder, CLIPTokenizer tokenizer,
                             PromptEncoderOptions options)
    : text_encoder_(std::move(text_encoder)), tokenizer_(std::move(tokenizer)), options_(options) {}

std::vector<PromptChunk> PromptEncoder::chunks(std::string_view prompt) const {
  return chunk_prompt(tokenizer_, prompt,
                      {options_.emphasis != EmphasisMode::Off, options_.comma_padding_backtrack});
}

torch::Tensor PromptEncoder::encode(std::string_view prompt) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (const auto& chunk : chunks(prompt)) {
    auto ids = torch::tensor(chunk.ids, torch::kInt64).unsqueeze(0).to(module_device(*text_encoder_));
    auto z = text_encoder_->encode(ids, options_.clip_skip);
    const bool weighted =
        std::any_of(chunk.weights.begin(), chunk.weights.end(), [](float w) { return w != 1.0f; });
    if (weighted && options_.emphasis != EmphasisMode::Off) {
      // A1111 multiplies in the embeddings' dtype and rescales by the ratio of whole-chunk means.
      const auto original_mean = z.mean();
      z = z * torch::tensor(chunk.weights, z.options()).reshape({1, -1, 1});
      if (options_.emphasis == EmphasisMode::Original) z = z * (original_mean / z.mean());
    }
    parts.push_back(z);
  }
  return torch::cat(parts, 1);
}

}  // namespace kiln
