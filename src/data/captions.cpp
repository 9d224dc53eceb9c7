#include "data/captions.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <string_view>

#include "util/error.h"

namespace kiln {

namespace {

std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n\f\v";
  const auto first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(kSpace) - first + 1);
}

// Offset of the first byte that does not start a well-formed UTF-8 sequence (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF), or nullopt when the text is valid.
std::optional<std::size_t> invalid_utf8_offset(std::string_view s) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  std::size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = byte(i);
    std::size_t length = 0;
    unsigned char low = 0x80, high = 0xBF;  // allowed range of the second byte
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      if (c == 0xE0) low = 0xA0;
      if (c == 0xED) high = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      if (c == 0xF0) low = 0x90;
      if (c == 0xF4) high = 0x8F;
    } else {
      return i;
    }
    if (i + length > s.size() || byte(i + 1) < low || byte(i + 1) > high) return i;
    for (std::size_t k = 2; k < length; ++k)
      if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return i;
    i += length;
  }
  return std::nullopt;
}

std::string read_sidecar(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error(path, "cannot open the caption file");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw_file_error(path, "read error in the caption file");

  constexpr std::string_view kBom = "\xEF\xBB\xBF";
  std::string_view body = text;
  std::size_t skipped = 0;
  if (body.starts_with(kBom)) {
    body.remove_prefix(kBom.size());
    skipped = kBom.size();
  }
  if (const auto bad = invalid_utf8_offset(body))
    throw_file_error(path, "not UTF-8 at byte " + std::to_string(*bad + skipped));

  std::string caption;
  while (!body.empty()) {
    const auto end = body.find('\n');
    const std::string_view line = trim(body.substr(0, end));
    if (!line.empty()) {
      if (!caption.empty()) caption += ", ";
      caption += line;
    }
    if (end == std::string_view::npos) break;
    body.remove_prefix(end + 1);
  }
  return caption;
}

std::vector<std::string> split_tags(const std::string& caption) {
  std::vector<std::string> tags;
  std::string_view rest = caption;
  while (true) {
    const auto comma = rest.find(',');
    const std::string_view tag = trim(rest.substr(0, comma));
    if (!tag.empty()) tags.emplace_back(tag);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return tags;
}

// Moves every occurrence of each listed tag out of `tags`, in listed order.
std::vector<std::string> take_tags(std::vector<std::string>& tags, const std::vector<std::string>& listed) {
  std::vector<std::string> taken;
  for (const auto& want : listed) {
    const std::string_view wanted = trim(want);
    for (auto it = tags.begin(); it != tags.end();) {
      if (*it == wanted) {
        taken.push_back(std::move(*it));
        it = tags.erase(it);
      } else {
        ++it;
      }
    }
  }
  return taken;
}

}  // namespace

std::string read_caption(const std::filesystem::path& image, const std::vector<std::string>& extensions) {
  for (const auto& extension : extensions) {
    const std::filesystem::path sidecar = image.parent_path() / (image.stem().string() + extension);
    std::error_code ec;
    if (std::filesystem::is_regular_file(sidecar, ec)) return read_sidecar(sidecar);
  }
  std::string caption = image.stem().string();
  std::replace(caption.begin(), caption.end(), '_', ' ');
  return std::string(trim(caption));
}

std::string process_caption(const std::string& caption, const CaptionOptions& options, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  // 53 random bits as a double in [0, 1): dividing all 64 bits would round up to 1.0 sometimes.
  const double draw = static_cast<double>(gen() >> 11) * 0x1.0p-53;
  if (options.dropout > 0.0 && draw < options.dropout) return {};

  std::vector<std::string> middle = split_tags(caption);
  const std::string activation(trim(options.activation_phrase));
  if (!activation.empty()) std::erase(middle, activation);
  std::vector<std::string> start = take_tags(middle, options.tags_to_start);
  std::vector<std::string> end = take_tags(middle, options.tags_to_end);

  if (options.shuffle_tags) {
    const std::size_t kept = static_cast<std::size_t>(
        std::clamp<long long>(options.keep_tags, 0, static_cast<long long>(middle.size())));
    // Fisher-Yates by hand: std::shuffle's sequence differs between standard libraries.
    const std::size_t count = middle.size() - kept;
    for (std::size_t i = count; i-- > 1;) {
      const std::size_t j = static_cast<std::size_t>(gen() % (i + 1));
      std::swap(middle[kept + i], middle[kept + j]);
    }
  }

  std::string out;
  const auto append = [&out](const std::string& tag) {
    if (!out.empty()) out += ", ";
    out += tag;
  };
  if (!activation.empty()) append(activation);
  for (const auto& tag : start) append(tag);
  for (const auto& tag : middle) append(tag);
  for (const auto& tag : end) append(tag);
  return out;
}

}  // namespace kiln
