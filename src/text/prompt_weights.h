// AUTOMATIC1111 prompt syntax: emphasis weights "(word:1.2)", "(word)" = x1.1, "[word]" = /1.1,
// escapes "\(" and BREAK; and its split of long prompts into 77-token chunks (BOS + 75 + EOS), with
// the comma back-off that keeps a phrase in one chunk. Spec: shared docs specs.md §6.7.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "text/clip_tokenizer.h"

namespace kiln {

struct WeightedText {
  std::string text;
  double weight = 1.0;  // kBreakWeight marks a BREAK
  friend bool operator==(const WeightedText&, const WeightedText&) = default;
};
inline constexpr double kBreakWeight = -1.0;

// A1111's parse_prompt_attention: fragments with their weights, adjacent equal weights merged;
// an empty prompt gives {{"", 1.0}}. Never throws: unbalanced brackets are read as A1111 reads them.
std::vector<WeightedText> parse_prompt_attention(std::string_view prompt);

struct PromptChunk {
  std::vector<int64_t> ids;     // 77: BOS, 75 tokens (EOS-padded), EOS
  std::vector<float> weights;   // 77: 1.0 for BOS/EOS/padding, the fragment weight elsewhere
};

struct ChunkOptions {
  bool emphasis = true;              // false: brackets are plain text, every weight 1.0
  int comma_padding_backtrack = 20;  // A1111's default; 0 turns the back-off off
};

// A1111's tokenize_line: at least one chunk (an empty prompt gives one chunk of BOS + EOS padding).
std::vector<PromptChunk> chunk_prompt(const CLIPTokenizer& tokenizer, std::string_view prompt,
                                      const ChunkOptions& options = {});

}  // namespace kiln
