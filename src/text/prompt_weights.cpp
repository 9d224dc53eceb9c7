// A1111's prompt emphasis parser (modules/prompt_parser.py) and chunker (modules/sd_hijack_clip.py,
// tokenize_line), hand-written instead of std::regex: A1111 runs Python `re` on a str, so `\s`, `\d`
// and `\b` are Unicode-aware ("猫BREAK犬" is not split there), which ECMAScript regex over UTF-8
// bytes cannot reproduce.
#include "text/prompt_weights.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "util/error.h"

namespace kiln {
namespace {

constexpr double kRoundMultiplier = 1.1;
constexpr double kSquareMultiplier = 1 / 1.1;
constexpr size_t kChunkLength = 75;

// One code point of the prompt and where its bytes start, so fragments are cut from the original
// bytes (bytes that are not valid UTF-8 are kept as they are, one code point each).
struct CodePoint {
  char32_t value;
  size_t offset;
};

constexpr char32_t kInvalid = 0xFFFD;

// Well-formed UTF-8 per Unicode Table 3-7; anything else is one kInvalid per byte.
std::vector<CodePoint> decode_utf8(std::string_view s) {
  std::vector<CodePoint> out;
  out.reserve(s.size() + 1);
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b0 = p[i];
    size_t len = 0;
    char32_t cp = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 < 0x80) {
      len = 1;
      cp = b0;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      cp = b0 & 0x0F;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      cp = b0 & 0x07;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    }
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char b = p[i + k];
      const unsigned char min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
      if (b < min || b > max) ok = false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (!ok) {
      len = 1;
      cp = kInvalid;
    }
    out.push_back({cp, i});
    i += len;
  }
  out.push_back({0, n});  // sentinel: its offset ends the last code point
  return out;
}

// Python's str.isspace / `\s` (bidi class WS, B or S, or category Zs; ASCII 0x1C-0x1F included).
bool py_is_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  if (c == kInvalid) return false;
  const auto u = static_cast<UChar32>(c);
  if (u_charType(u) == U_SPACE_SEPARATOR) return true;
  const UCharDirection d = u_charDirection(u);
  return d == U_WHITE_SPACE_NEUTRAL || d == U_BLOCK_SEPARATOR || d == U_SEGMENT_SEPARATOR;
}

// Python's `\d` on str: Unicode decimal digits (category Nd).
bool py_is_decimal(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return u_charType(static_cast<UChar32>(c)) == U_DECIMAL_DIGIT_NUMBER;
}

// Python's `\w` on str: str.isalnum() (letters and anything with a numeric value) or '_'.
bool py_is_word(char32_t c) {
  if (c < 0x80) return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  const auto u = static_cast<UChar32>(c);
  return u_isalpha(u) || u_getNumericValue(u) != U_NO_NUMERIC_VALUE;
}

bool is_special(char32_t c) { return c == '\\' || c == '(' || c == ')' || c == '[' || c == ']' || c == ':'; }

// Python's float() on what `[+-]?[.\d]+` matched: any Nd digit counts, "5." and ".5" are fine,
// overflow is ±inf and underflow ±0.0. nullopt where Python raises ValueError ("1.2.3", ".").
std::optional<double> py_float(const std::vector<CodePoint>& cps, size_t begin, size_t end) {
  std::string ascii;
  bool negative = false;
  int dots = 0, digits = 0;
  for (size_t i = begin; i < end; ++i) {
    const char32_t c = cps[i].value;
    if (c == '+' || c == '-') {
      negative = c == '-';
    } else if (c == '.') {
      ++dots;
      ascii += '.';
    } else {
      ++digits;
      ascii += static_cast<char>('0' + u_charDigitValue(static_cast<UChar32>(c)));
    }
  }
  if (dots > 1 || digits == 0) return std::nullopt;
  double value = 0;
  const auto [ptr, ec] = std::from_chars(ascii.data(), ascii.data() + ascii.size(), value);
  if (ec == std::errc::result_out_of_range) {
    // from_chars leaves the value alone here; Python rounds to inf when a nonzero digit precedes
    // the point, to zero otherwise.
    const size_t point = std::min(ascii.find('.'), ascii.size());
    const bool big = ascii.find_first_not_of('0') < point;
    value = big ? std::numeric_limits<double>::infinity() : 0.0;
  } else if (ec != std::errc() || ptr != ascii.data() + ascii.size()) {
    return std::nullopt;
  }
  return negative ? -value : value;
}

class AttentionParser {
 public:
  explicit AttentionParser(std::string_view prompt) : prompt_(prompt), cps_(decode_utf8(prompt)) {}

  std::vector<WeightedText> parse() {
    const size_t n = cps_.size() - 1;
    size_t i = 0;
    while (i < n) {
      const char32_t c = cps_[i].value;
      if (c == '\\') {
        const char32_t next = i + 1 < n ? cps_[i + 1].value : 0;
        const size_t len = next == '(' || next == ')' || next == '[' || next == ']' || next == '\\' ? 2 : 1;
        res_.push_back({text(i + 1, i + len), 1.0});
        i += len;
      } else if (c == '(') {
        round_.push_back(res_.size());
        ++i;
      } else if (c == '[') {
        square_.push_back(res_.size());
        ++i;
      } else if (c == ':') {
        i = colon(i);
      } else if (c == ')' && !round_.empty()) {
        pop_multiply(round_, kRoundMultiplier);
        ++i;
      } else if (c == ']' && !square_.empty()) {
        pop_multiply(square_, kSquareMultiplier);
        ++i;
      } else if (c == ')' || c == ']') {
        append_text(i, i + 1);
        ++i;
      } else {
        size_t j = i;
        while (j < n && !is_special(cps_[j].value)) ++j;
        append_text(i, j);
        i = j;
      }
    }
    // Unclosed brackets still count, outermost first (the order matters for the rounding).
    for (size_t pos : round_) multiply_range(pos, kRoundMultiplier);
    for (size_t pos : square_) multiply_range(pos, kSquareMultiplier);
    if (res_.empty()) res_.push_back({"", 1.0});

    std::vector<WeightedText> merged;
    for (auto& item : res_) {
      if (!merged.empty() && merged.back().weight == item.weight) {
        merged.back().text += item.text;
      } else {
        merged.push_back(std::move(item));
      }
    }
    return merged;
  }

 private:
  std::string text(size_t begin, size_t end) const {
    return std::string(prompt_.substr(cps_[begin].offset, cps_[end].offset - cps_[begin].offset));
  }

  void multiply_range(size_t start, double multiplier) {
    for (size_t p = start; p < res_.size(); ++p) res_[p].weight *= multiplier;
  }

  void pop_multiply(std::vector<size_t>& stack, double multiplier) {
    const size_t start = stack.back();
    stack.pop_back();
    multiply_range(start, multiplier);
  }

  // At a ':'; returns where parsing continues. The regex tries `:\s*([+-]?[.\d]+)\s*\)` first and
  // falls back to a lone ':'. Neither `\s*` nor `[.\d]+` can give back characters to let the
  // rest match, so greedy matching is what Python's backtracking ends with.
  size_t colon(size_t i) {
    const size_t n = cps_.size() - 1;
    size_t j = i + 1;
    while (j < n && py_is_space(cps_[j].value)) ++j;
    const size_t num_begin = j;
    if (j < n && (cps_[j].value == '+' || cps_[j].value == '-')) ++j;
    const size_t digits_begin = j;
    while (j < n && (cps_[j].value == '.' || py_is_decimal(cps_[j].value))) ++j;
    const size_t num_end = j;
    while (j < n && py_is_space(cps_[j].value)) ++j;
    if (num_end > digits_begin && j < n && cps_[j].value == ')') {
      const size_t end = j + 1;
      if (round_.empty()) {
        append_text(i, end);
        return end;
      }
      if (const auto weight = py_float(cps_, num_begin, num_end)) {
        pop_multiply(round_, *weight);
        return end;
      }
      // A1111 raises ValueError here; kiln reads the ':' as a plain one, as if the regex had only
      // accepted numbers, so "(a:1.2.3)" is "a:1.2.3" at 1.1.
    }
    append_text(i, i + 1);
    return i + 1;
  }

  // A plain-text match: `re.split(r"\s*\bBREAK\b\s*", text)`, with a BREAK marker between the
  // parts (empty parts included, as re.split gives them). `\b` only sees the match's own text.
  void append_text(size_t begin, size_t end) {
    static constexpr char32_t kBreak[] = {'B', 'R', 'E', 'A', 'K'};
    auto is_break_at = [&](size_t w) {
      if (w + 5 > end) return false;
      for (size_t k = 0; k < 5; ++k) {
        if (cps_[w + k].value != kBreak[k]) return false;
      }
      const bool boundary_before = w == begin || !py_is_word(cps_[w - 1].value);
      const bool boundary_after = w + 5 == end || !py_is_word(cps_[w + 5].value);
      return boundary_before && boundary_after;
    };
    size_t part_begin = begin;
    size_t s = begin;
    while (s < end) {
      // "BREAK" starts with a non-space, so `\s*` must take the whole run of spaces from s.
      size_t w = s;
      while (w < end && py_is_space(cps_[w].value)) ++w;
      if (!is_break_at(w)) {
        s = w + 1;  // every start inside this run of spaces reaches the same w
        continue;
      }
      res_.push_back({text(part_begin, s), 1.0});
      res_.push_back({"BREAK", kBreakWeight});
      size_t after = w + 5;
      while (after < end && py_is_space(cps_[after].value)) ++after;
      part_begin = s = after;
    }
    res_.push_back({text(part_begin, end), 1.0});
  }

  std::string_view prompt_;
  std::vector<CodePoint> cps_;
  std::vector<WeightedText> res_;
  std::vector<size_t> round_;
  std::vector<size_t> square_;
};

// A1111 keeps the 75 tokens and their Python-float multipliers, framing them only when a chunk is
// finished.
struct OpenChunk {
  std::vector<int64_t> ids;
  std::vector<double> weights;
};

}  // namespace

std::vector<WeightedText> parse_prompt_attention(std::string_view prompt) {
  return AttentionParser(prompt).parse();
}

std::vector<PromptChunk> chunk_prompt(const CLIPTokenizer& tokenizer, std::string_view prompt,
                                      const ChunkOptions& options) {
  const std::vector<WeightedText> parsed =
      options.emphasis ? parse_prompt_attention(prompt)
                       : std::vector<WeightedText>{WeightedText{std::string(prompt), 1.0}};
  // A vocabulary without ",</w>" simply has no comma to back off to.
  const std::optional<int64_t> comma = tokenizer.token_to_id(",</w>");
  const int64_t backtrack = options.comma_padding_backtrack;

  std::vector<PromptChunk> chunks;
  OpenChunk chunk;
  int64_t last_comma = -1;

  auto next_chunk = [&] {
    PromptChunk framed;
    framed.ids.reserve(kChunkLength + 2);
    framed.weights.reserve(kChunkLength + 2);
    framed.ids.push_back(CLIPTokenizer::kBosId);
    framed.weights.push_back(1.0f);
    for (size_t k = 0; k < chunk.ids.size(); ++k) {
      framed.ids.push_back(chunk.ids[k]);
      // The embeddings are scaled in float32: a weight beyond its range would turn a picture into NaN.
      if (std::abs(chunk.weights[k]) > std::numeric_limits<float>::max())
        throw Error("prompt weight " + std::to_string(chunk.weights[k]) +
                    " is out of range (emphasis weights must fit a 32-bit float, about ±3.4e38)");
      framed.weights.push_back(static_cast<float>(chunk.weights[k]));
    }
    framed.ids.resize(kChunkLength + 2, CLIPTokenizer::kEosId);
    framed.weights.resize(kChunkLength + 2, 1.0f);
    chunks.push_back(std::move(framed));
    chunk = OpenChunk{};
    last_comma = -1;
  };

  for (const WeightedText& fragment : parsed) {
    if (fragment.text == "BREAK" && fragment.weight == kBreakWeight) {
      next_chunk();
      continue;
    }
    const std::vector<int64_t> tokens = tokenizer.encode(fragment.text);
    for (const int64_t token : tokens) {
      const auto length = static_cast<int64_t>(chunk.ids.size());
      if (comma && token == *comma) {
        last_comma = length;
      } else if (backtrack != 0 && length == static_cast<int64_t>(kChunkLength) && last_comma != -1 &&
                 length - last_comma <= backtrack) {
        // Move what follows the last comma into the next chunk so that phrase stays whole.
        const auto break_location = static_cast<size_t>(last_comma + 1);
        OpenChunk relocated{{chunk.ids.begin() + break_location, chunk.ids.end()},
                            {chunk.weights.begin() + break_location, chunk.weights.end()}};
        chunk.ids.resize(break_location);
        chunk.weights.resize(break_location);
        next_chunk();
        chunk = std::move(relocated);
      }
      if (chunk.ids.size() == kChunkLength) next_chunk();
      chunk.ids.push_back(token);
      chunk.weights.push_back(fragment.weight);
    }
  }
  if (!chunk.ids.empty() || chunks.empty()) next_chunk();
  return chunks;
}

}  // namespace kiln
