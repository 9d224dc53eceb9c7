// Prompt text -> UNet conditioning as AUTOMATIC1111 builds it: emphasis weights, 77-token chunks
// encoded one by one (with CLIP skip) and concatenated, so prompts longer than 75 tokens keep
// every word. A prompt without emphasis that fits one chunk gives exactly diffusers' embeddings.
#pragma once
#include <torch/types.h>

#include <string>
#include <string_view>

#include "models/clip_text.h"
#include "text/clip_tokenizer.h"
#include "text/prompt_weights.h"

namespace kiln {

enum class EmphasisMode {
  Original,  // A1111 default: z·w, then rescaled so the chunk's mean is unchanged
  NoNorm,    // z·w only (what kohya's weighted captions do)
  Off,       // brackets are plain text
};
EmphasisMode parse_emphasis_mode(const std::string& name);  // original | no_norm | off

struct PromptEncoderOptions {
  int64_t clip_skip = 1;  // A1111 convention: 1 = last layer, 2 = penultimate (+ final layer norm)
  EmphasisMode emphasis = EmphasisMode::Original;
  int comma_padding_backtrack = 20;
};

class PromptEncoder {
 public:
  PromptEncoder(CLIPTextModel text_encoder, CLIPTokenizer tokenizer, PromptEncoderOptions options = {});
  // [1, 77·chunks, hidden] conditioning for one prompt.
  torch::Tensor encode(std::string_view prompt);
  std::vector<PromptChunk> chunks(std::string_view prompt) const;
  const PromptEncoderOptions& options() const { return options_; }

 private:
  CLIPTextModel text_encoder_;
  CLIPTokenizer tokenizer_;
  PromptEncoderOptions options_;
};

}  // namespace kiln
