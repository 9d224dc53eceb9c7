// libFuzzer target for A1111 prompt syntax (prompt_weights.h): parse_prompt_attention never throws
// and returns pieces with finite weights (or the BREAK marker), merged when adjacent and equal;
// chunk_prompt (with the embedded tokenizer) gives chunks of exactly 77 ids in range, BOS first,
// EOS last, and 77 finite weights; a parsed weight beyond float's range is a kiln::Error instead
// ("(x:1e39)" would scale an embedding by inf; see crashes/weight_overflows_float).
// Byte 0 picks the chunk options; the rest is the prompt.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>

#include "fuzz_utf8.h"
#include "text/clip_tokenizer.h"
#include "text/prompt_weights.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kiln::CLIPTokenizer tokenizer = kiln::CLIPTokenizer::from_embedded();
  if (size == 0) return 0;
  const std::string_view prompt(reinterpret_cast<const char*>(data) + 1, size - 1);

  const auto pieces = kiln::parse_prompt_attention(prompt);  // never throws: any exception is a finding
  if (pieces.empty()) __builtin_trap();
  for (size_t i = 0; i < pieces.size(); ++i) {
    const double w = pieces[i].weight;
    if (!std::isfinite(w)) __builtin_trap();
    if (w == kiln::kBreakWeight) continue;
    if (i > 0 && pieces[i - 1].weight == w) __builtin_trap();  // adjacent equal weights are merged
  }
  const bool overflows_float = std::any_of(pieces.begin(), pieces.end(), [](const kiln::WeightedText& p) {
    return std::abs(p.weight) > std::numeric_limits<float>::max();
  });
  if (kiln_fuzz::valid_utf8(prompt))
    for (const auto& p : pieces)
      if (!kiln_fuzz::valid_utf8(p.text)) __builtin_trap();

  kiln::ChunkOptions o;
  o.emphasis = !(data[0] & 1);
  o.comma_padding_backtrack = (data[0] >> 1) & 0x1f;  // 0..31 around the default 20
  if (prompt.size() > 1024) return 0;                 // chunking is linear in tokens; keep executions fast
  std::vector<kiln::PromptChunk> chunks;
  try {
    chunks = kiln::chunk_prompt(tokenizer, prompt, o);
  } catch (const kiln::Error&) {
    if (!overflows_float || !o.emphasis) __builtin_trap();  // the only refusal chunk_prompt makes
    return 0;
  }
  if (chunks.empty()) __builtin_trap();
  for (const auto& c : chunks) {
    if (c.ids.size() != 77 || c.weights.size() != 77) __builtin_trap();
    if (c.ids.front() != kiln::CLIPTokenizer::kBosId || c.ids.back() != kiln::CLIPTokenizer::kEosId)
      __builtin_trap();
    for (int64_t id : c.ids)
      if (id < 0 || id >= tokenizer.vocab_size()) __builtin_trap();
    for (float w : c.weights)
      if (!std::isfinite(w)) __builtin_trap();
    if (!o.emphasis)
      for (float w : c.weights)
        if (w != 1.0f) __builtin_trap();
  }
  return 0;
}
