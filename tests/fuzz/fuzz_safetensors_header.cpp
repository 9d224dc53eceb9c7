// libFuzzer target for parse_safetensors_header: any input must either parse into a header that
// satisfies the format's invariants or raise kiln::Error; crashes, sanitizer reports and other
// exception types are findings.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "io/safetensors_header.h"
#include "util/error.h"

namespace {

// Everything a successful parse promises to the reader that will index the mapping with it.
void check_invariants(const kiln::SafeTensorsHeader& h, uint64_t file_size) {
  const uint64_t data_size = file_size - 8 - h.header_length;
  uint64_t total = 0;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const kiln::TensorEntry& t = h.tensors[i];
    if (i > 0 && !(h.tensors[i - 1].name < t.name)) __builtin_trap();  // sorted, unique
    if (t.begin > t.end || t.end > data_size) __builtin_trap();
    for (int64_t d : t.shape)
      if (d < 0) __builtin_trap();
    if ((t.end - t.begin) != t.numel() * kiln::dtype_size(t.dtype)) __builtin_trap();
    total += t.end - t.begin;
  }
  if (total != data_size) __builtin_trap();  // tiled exactly: no holes, no overlaps
}

// Error messages are printed to terminals: one line, no control bytes, valid UTF-8.
bool printable_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f) return false;
      ++i;
      continue;
    }
    const size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    i += len;
  }
  return true;
}

void parse(std::string_view prefix, uint64_t file_size) {
  try {
    check_invariants(kiln::parse_safetensors_header(prefix, file_size, "fuzz"), file_size);
  } catch (const kiln::Error& e) {
    if (!printable_utf8(e.what())) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    // Structured mode, so mutations explore the JSON instead of mostly breaking the length field:
    // input = mode, 2-byte data-section length, JSON header. The data bytes themselves are never read.
    if (input.size() < 2) return 0;
    const uint64_t data_size =
        static_cast<uint8_t>(input[0]) | (static_cast<uint64_t>(static_cast<uint8_t>(input[1])) << 8);
    const std::string_view json = input.substr(2);
    std::string prefix(8, '\0');
    const uint64_t n = json.size();
    std::memcpy(prefix.data(), &n, 8);
    prefix.append(json);
    parse(prefix, prefix.size() + data_size);
  } else {
    // Raw mode: the rest is a whole file, length field included.
    parse(input, input.size());
  }
  return 0;
}
