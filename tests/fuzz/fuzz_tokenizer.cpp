// libFuzzer target for CLIPTokenizer (embedded vocabulary) on arbitrary bytes. Findings: crashes,
// sanitizer reports, any exception; ids outside [0, vocab_size);
// encode_sd not max_length long, not BOS first / EOS last, not the prefix of encode() then EOS
// padding; tokens() not matching encode(); decode() giving invalid UTF-8; clip_clean_text giving
// invalid UTF-8 (it reads invalid input as U+FFFD).
#include <cstdint>
#include <string_view>
#include <vector>

#include "fuzz_utf8.h"
#include "text/clip_tokenizer.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kiln::CLIPTokenizer;
  static const CLIPTokenizer tokenizer = CLIPTokenizer::from_embedded();
  if (size == 0) return 0;
  const int64_t max_length = 2 + data[0] % 80;  // 2..81, around SD's 77
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const int64_t vocab = tokenizer.vocab_size();

  if (!kiln_fuzz::valid_utf8(kiln::clip_clean_text(text))) __builtin_trap();

  const std::vector<int64_t> ids = tokenizer.encode(text);
  for (int64_t id : ids)
    if (id < 0 || id >= vocab) __builtin_trap();
  const auto tokens = tokenizer.tokens(text);
  if (tokens.size() != ids.size()) __builtin_trap();
  for (size_t i = 0; i < ids.size(); ++i)
    if (tokenizer.token_to_id(tokens[i]) != ids[i]) __builtin_trap();

  const std::vector<int64_t> sd = tokenizer.encode_sd(text, max_length);
  if (static_cast<int64_t>(sd.size()) != max_length) __builtin_trap();
  if (sd.front() != CLIPTokenizer::kBosId || sd.back() != CLIPTokenizer::kEosId) __builtin_trap();
  const size_t kept = std::min<size_t>(ids.size(), max_length - 2);
  for (size_t i = 0; i < kept; ++i)
    if (sd[1 + i] != ids[i]) __builtin_trap();
  for (size_t i = 1 + kept; i < sd.size(); ++i)
    if (sd[i] != CLIPTokenizer::kEosId) __builtin_trap();

  if (!kiln_fuzz::valid_utf8(tokenizer.decode(ids))) __builtin_trap();
  return 0;
}
