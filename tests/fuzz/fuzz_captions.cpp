// libFuzzer target for process_caption: options are drawn from the input's first bytes, the rest
// is the caption. Findings: crashes, sanitizer reports, exceptions (it only throws kiln::Error, and
// process_caption has no error path), invalid UTF-8 output for valid UTF-8 input, and broken
// promises of captions.h (same seed, same output; unless dropped, the activation phrase first and
// exactly once, and the output tags the caption's tags, minus copies of the phrase, reordered).
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/captions.h"
#include "fuzz_utf8.h"
#include "util/error.h"

namespace {

// Input: flags, keep_tags, dropout byte, 8 seed bytes, then "phrase\x1fstart1\x1estart2\x1f
// end1\x1eend2\x1fcaption": fields split by 0x1f, list items by 0x1e.
std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.emplace_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

std::string trim(std::string_view s) {
  const auto ws = [](char c) { return std::string_view(" \t\r\n\f\v").find(c) != std::string_view::npos; };
  while (!s.empty() && ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && ws(s.back())) s.remove_suffix(1);
  return std::string(s);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 11) return 0;
  const uint8_t flags = data[0];
  kiln::CaptionOptions o;
  o.shuffle_tags = flags & 1;
  o.keep_tags = static_cast<int8_t>(data[1]);  // negative values too
  o.dropout = (flags & 2) ? data[2] / 255.0 : 0.0;
  if (flags & 4) o.dropout = (data[2] & 1) ? 1.5 : -0.5;  // out of range
  uint64_t seed = 0;
  for (int i = 0; i < 8; ++i) seed = (seed << 8) | data[3 + i];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 11, size - 11);
  auto fields = split(rest, '\x1f');
  std::string caption;
  if (fields.size() >= 4) {
    o.activation_phrase = fields[0];
    o.tags_to_start = split(fields[1], '\x1e');
    o.tags_to_end = split(fields[2], '\x1e');
    caption = std::string(rest.substr(fields[0].size() + fields[1].size() + fields[2].size() + 3));
  } else {
    caption = std::string(rest);
  }

  std::string out;
  try {
    out = kiln::process_caption(caption, o, seed);
  } catch (const kiln::Error&) {
    return 0;
  }  // anything else escapes and libFuzzer reports it
  if (kiln::process_caption(caption, o, seed) != out) __builtin_trap();  // deterministic

  bool inputs_utf8 = kiln_fuzz::valid_utf8(caption) && kiln_fuzz::valid_utf8(o.activation_phrase);
  for (const auto& t : o.tags_to_start) inputs_utf8 = inputs_utf8 && kiln_fuzz::valid_utf8(t);
  for (const auto& t : o.tags_to_end) inputs_utf8 = inputs_utf8 && kiln_fuzz::valid_utf8(t);
  if (inputs_utf8 && !kiln_fuzz::valid_utf8(out)) __builtin_trap();

  if (out.empty()) return 0;  // dropped (or nothing to say)
  const std::string phrase = trim(o.activation_phrase);
  if (phrase.find(',') != std::string::npos) return 0;  // a phrase with commas reads as several tags
  std::vector<std::string> expected, got;
  for (const auto& t : split(caption, ','))
    if (const std::string tag = trim(t); !tag.empty() && tag != phrase) expected.push_back(tag);
  if (!phrase.empty()) expected.insert(expected.begin(), phrase);
  for (const auto& t : split(out, ',')) got.push_back(trim(t));
  if (!phrase.empty() && got.front() != phrase) __builtin_trap();  // the phrase comes first
  std::sort(expected.begin(), expected.end());
  std::sort(got.begin(), got.end());
  if (got != expected) __builtin_trap();  // no tag lost, invented or duplicated
  return 0;
}
