// CLIP byte-level BPE tokenizer, id-for-id equal to transformers' slow CLIPTokenizer (ftfy enabled).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

// The text cleaning transformers applies before pre-tokenisation:
// `whitespace_clean(ftfy.fix_text(text)).lower()`. kiln reproduces the parts of ftfy that change
// prompts (see docs/tokenizer.md); invalid UTF-8 in `text` is read as U+FFFD.
std::string clip_clean_text(std::string_view text);

// Only ftfy.fix_text (default config) as far as kiln reproduces it; exposed for tests.
std::string ftfy_fix_text(std::string_view text);

// Thread safety: every method is const and safe to call from several threads at once; the per-word
// BPE cache each tokenizer owns is guarded by a mutex. Copies share the immutable tables and start
// with an empty cache.
class CLIPTokenizer {
 public:
  static constexpr int64_t kBosId = 49406;   // <|startoftext|>
  static constexpr int64_t kEosId = 49407;   // <|endoftext|>, also SD 1.x's pad id
  static constexpr int64_t kMaxLength = 77;  // SD 1.x text-encoder context
  static constexpr std::string_view kBosToken = "<|startoftext|>";
  static constexpr std::string_view kEosToken = "<|endoftext|>";

  // OpenAI's merges compiled into the library; the vocabulary is derived from them exactly as
  // OpenAI/transformers do (49,408 entries).
  static CLIPTokenizer from_embedded();
  // A transformers/diffusers tokenizer: vocab.json (token -> id) and merges.txt ("#version" line,
  // then one "a b" merge per line; like transformers, at most 48,894 merges are read). Missing or
  // malformed files throw kiln::Error naming the file.
  static CLIPTokenizer from_files(const std::filesystem::path& vocab_json,
                                  const std::filesystem::path& merges_txt);
  // A diffusers `tokenizer/` folder holding vocab.json and merges.txt.
  static CLIPTokenizer from_folder(const std::filesystem::path& dir);

  CLIPTokenizer(const CLIPTokenizer& other);
  CLIPTokenizer& operator=(const CLIPTokenizer& other);
  CLIPTokenizer(CLIPTokenizer&&) noexcept;
  CLIPTokenizer& operator=(CLIPTokenizer&&) noexcept;
  ~CLIPTokenizer();

  // Token ids without BOS/EOS and without truncation (transformers `tokenize` + ids).
  std::vector<int64_t> encode(std::string_view text) const;
  // The BPE strings behind `encode` ("</w>" marks a word end), as transformers' `tokenize`.
  std::vector<std::string> tokens(std::string_view text) const;
  // SD 1.x framing: BOS + the first max_length-2 ids + EOS, padded with EOS to max_length
  // (transformers padding="max_length", truncation=True, pad_token=<|endoftext|>).
  std::vector<int64_t> encode_sd(std::string_view text, int64_t max_length = kMaxLength) const;
  // OpenAI's decode: BPE strings joined, bytes decoded as UTF-8 (invalid -> U+FFFD), every
  // "</w>" replaced by a space (so a trailing space remains). Special ids decode to their text.
  std::string decode(std::span<const int64_t> ids) const;

  int64_t vocab_size() const;
  // The token string of an id; throws kiln::Error when out of range.
  const std::string& id_to_token(int64_t id) const;
  std::optional<int64_t> token_to_id(std::string_view token) const;

 private:
  struct Tables;
  struct Cache;
  explicit CLIPTokenizer(std::shared_ptr<const Tables> tables);
  // BPE of one pre-token (raw UTF-8 bytes): vocabulary token indices into Tables::tokens.
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  void encode_chunk(std::string_view text, std::vector<int32_t>& out) const;
  std::vector<int32_t> encode_tokens(std::string_view text) const;

  std::shared_ptr<const Tables> tables_;
  std::unique_ptr<Cache> cache_;
};

// Writes a diffusers/transformers `tokenizer/` folder for the embedded CLIP vocabulary (vocab.json,
// merges.txt, special_tokens_map.json, tokenizer_config.json as SD 1.5 ships them). `dir` must exist.
void write_clip_tokenizer_folder(const std::filesystem::path& dir);

}  // namespace kiln
