// Validating safetensors header parser. It reads the JSON with a SAX handler, so hostile input
// (deep nesting, huge arrays, wrong types) is rejected as it streams instead of first becoming a DOM.
#include "io/safetensors_header.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdio>
#include <cstring>
#include <set>

#include "util/error.h"

namespace kiln {
namespace {

constexpr uint64_t kMaxHeaderLength = 100'000'000;  // the reference reader's limit
constexpr size_t kMaxShownLength = 120;             // names quoted in messages are cut to this

struct DTypeInfo {
  SafeTensorsDType dtype;
  std::string_view name;
  size_t size;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {SafeTensorsDType::BOOL, "BOOL", 1},
    {SafeTensorsDType::U8, "U8", 1},
    {SafeTensorsDType::I8, "I8", 1},
    {SafeTensorsDType::I16, "I16", 2},
    {SafeTensorsDType::U16, "U16", 2},
    {SafeTensorsDType::F16, "F16", 2},
    {SafeTensorsDType::BF16, "BF16", 2},
    {SafeTensorsDType::I32, "I32", 4},
    {SafeTensorsDType::U32, "U32", 4},
    {SafeTensorsDType::F32, "F32", 4},
    {SafeTensorsDType::F64, "F64", 8},
    {SafeTensorsDType::I64, "I64", 8},
    {SafeTensorsDType::U64, "U64", 8},
    {SafeTensorsDType::F8_E5M2, "F8_E5M2", 1},
    {SafeTensorsDType::F8_E4M3, "F8_E4M3", 1},
}};

// Names come from untrusted files: keep messages to one printable line of bounded length.
std::string shown_name(std::string_view s) {
  std::string out = "'";
  size_t shown = std::min(s.size(), kMaxShownLength);
  while (shown < s.size() && (static_cast<unsigned char>(s[shown]) & 0xc0) == 0x80)
    ++shown;  // whole UTF-8 chars
  for (size_t i = 0; i < shown; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (shown < s.size()) out += "...";
  return out + "'";
}

struct RawTensor {
  std::string name;
  bool has_dtype = false, has_shape = false, has_offsets = false;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::vector<uint64_t> offsets;
};

// Streams the JSON and enforces the header's schema. Depth 1 is the top-level object,
// 2 a tensor entry or __metadata__, 3 a shape or data_offsets array; nothing deeper is legal.
class HeaderSax {
 public:
  using json = nlohmann::json;

  std::string error;  // first problem found; parsing stops there
  std::map<std::string, std::string> metadata;
  std::vector<RawTensor> tensors;

  bool null() { return unexpected("null"); }
  bool boolean(bool) { return unexpected("a boolean"); }
  bool number_integer(json::number_integer_t v) {
    // nlohmann reports only negative literals here; non-negative ones arrive as unsigned.
    if (depth_ == 3)
      return fail(in_tensor() + ": " + field_ + " holds a negative value " + std::to_string(v));
    return unexpected("a number");
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (depth_ != 3) return unexpected("a number");
    array_->push_back(v);
    return true;
  }
  bool number_float(json::number_float_t, const std::string&) {
    if (depth_ == 3)
      return fail(in_tensor() + ": " + field_ +
                  " must hold non-negative integers (found a fraction, exponent or a value above 2^64-1)");
    return unexpected("a number");
  }
  bool string(std::string& s) {
    if (depth_ == 2 && in_metadata_) {
      metadata.emplace(key_, std::move(s));
      return true;
    }
    if (depth_ == 2 && field_ == "dtype") {
      tensors.back().dtype = std::move(s);
      return true;
    }
    return unexpected("a string");
  }
  bool binary(json::binary_t&) { return unexpected("binary data"); }

  bool start_object(std::size_t) {
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    if (depth_ == 1) {
      depth_ = 2;
      in_metadata_ = top_key_ == "__metadata__";
      if (!in_metadata_) {
        tensors.emplace_back();
        tensors.back().name = top_key_;
      }
      return true;
    }
    return unexpected("an object");
  }
  bool end_object() {
    if (depth_ == 2 && !in_metadata_) {
      const RawTensor& t = tensors.back();
      const char* missing = !t.has_dtype     ? "dtype"
                            : !t.has_shape   ? "shape"
                            : !t.has_offsets ? "data_offsets"
                                             : nullptr;
      if (missing) return fail(in_tensor() + ": missing \"" + missing + "\"");
    }
    in_metadata_ = false;
    --depth_;
    return true;
  }
  bool key(std::string& k) {
    if (depth_ == 1) {
      if (!top_keys_.insert(k).second) return fail("duplicate key " + shown_name(k) + " in header");
      top_key_ = std::move(k);
      return true;
    }
    // depth 2
    if (in_metadata_) {
      if (metadata.count(k)) return fail("duplicate key " + shown_name(k) + " in __metadata__");
      key_ = std::move(k);
      return true;
    }
    RawTensor& t = tensors.back();
    bool* seen = k == "dtype"          ? &t.has_dtype
                 : k == "shape"        ? &t.has_shape
                 : k == "data_offsets" ? &t.has_offsets
                                       : nullptr;
    if (!seen)
      return fail(in_tensor() + ": unexpected field " + shown_name(k) +
                  " (allowed: dtype, shape, data_offsets)");
    if (*seen) return fail(in_tensor() + ": duplicate field " + shown_name(k));
    *seen = true;
    field_ = std::move(k);
    return true;
  }
  bool start_array(std::size_t) {
    if (depth_ == 2 && !in_metadata_ && (field_ == "shape" || field_ == "data_offsets")) {
      depth_ = 3;
      array_ = field_ == "shape" ? &tensors.back().shape : &tensors.back().offsets;
      return true;
    }
    return unexpected("an array");
  }
  bool end_array() {
    depth_ = 2;
    array_ = nullptr;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    std::string what = e.what();
    // Drop nlohmann's "[json.exception.parse_error.101] " tag; the rest says where and what.
    if (auto pos = what.find("] "); what.rfind("[json.exception", 0) == 0 && pos != std::string::npos)
      what = what.substr(pos + 2);
    // nlohmann quotes the offending bytes raw; escape them so the message stays printable ASCII.
    std::string clean;
    for (size_t i = 0; i < what.size() && clean.size() < 300; ++i) {
      const unsigned char c = static_cast<unsigned char>(what[i]);
      if (c >= 0x20 && c < 0x7f) {
        clean.push_back(static_cast<char>(c));
      } else {
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02x", c);
        clean += hex;
      }
    }
    if (clean.size() >= 300) clean += "...";
    return fail("header is not valid JSON: " + clean);
  }

 private:
  std::string in_tensor() const { return "tensor " + shown_name(tensors.back().name); }

  bool fail(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
  }

  // A value of the wrong JSON type, described by where it was found.
  bool unexpected(const char* found) {
    std::string f = std::string("found ") + found;
    switch (depth_) {
      case 0:
        return fail("header is not a JSON object (" + f + ")");
      case 1:
        if (top_key_ == "__metadata__") return fail("__metadata__ must be an object of strings (" + f + ")");
        return fail("tensor " + shown_name(top_key_) +
                    " must be an object with dtype, shape and data_offsets (" + f + ")");
      case 2:
        if (in_metadata_)
          return fail("__metadata__ value for key " + shown_name(key_) + " must be a string (" + f + ")");
        if (field_ == "dtype") return fail(in_tensor() + ": dtype must be a string (" + f + ")");
        return fail(in_tensor() + ": " + field_ + " must be an array of non-negative integers (" + f + ")");
      default:
        return fail(in_tensor() + ": " + field_ + " must hold non-negative integers (" + f + ")");
    }
  }

  int depth_ = 0;
  bool in_metadata_ = false;
  std::string top_key_, key_, field_;
  std::set<std::string> top_keys_;
  std::vector<uint64_t>* array_ = nullptr;
};

std::string offsets_text(const TensorEntry& t) {
  // Built by appending: GCC 12 gives a false -Wrestrict for `"[" + std::string&&`.
  std::string out = "[";
  out += std::to_string(t.begin);
  out += ", ";
  out += std::to_string(t.end);
  out += "]";
  return out;
}

}  // namespace

uint64_t TensorEntry::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);  // overflow was ruled out when parsing
  return n;
}

std::string_view dtype_name(SafeTensorsDType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  return "?";
}

size_t dtype_size(SafeTensorsDType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d.size;
  return 0;
}

SafeTensorsHeader parse_safetensors_header(std::string_view prefix, uint64_t file_size,
                                           const std::string& source) {
  auto fail = [&](const std::string& problem) { throw Error(source + ": " + problem); };

  if (file_size < 8)
    fail("not a safetensors file: " + std::to_string(file_size) +
         " bytes, too short for the 8-byte header length");
  if (prefix.size() < 8) fail("internal: fewer than 8 header bytes were supplied");
  uint64_t n = 0;
  static_assert(std::endian::native == std::endian::little,
                "safetensors is little-endian; big-endian hosts are not supported");
  std::memcpy(&n, prefix.data(), 8);
  if (n > kMaxHeaderLength)
    fail("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderLength) +
         " bytes (corrupt or not a safetensors file)");
  if (8 + n > file_size)
    fail("truncated: header length is " + std::to_string(n) + " bytes but the file has only " +
         std::to_string(file_size) + " bytes");
  if (prefix.size() < 8 + n) fail("internal: the supplied prefix does not hold the whole header");
  const std::string_view text = prefix.substr(8, n);
  if (text.empty()) fail("header is empty (length 0)");
  if (text.front() != '{') {
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02x", static_cast<unsigned char>(text.front()));
    fail(std::string("header is not a JSON object (must start with '{', first byte is ") + byte + ")");
  }

  HeaderSax sax;
  const bool ok = nlohmann::json::sax_parse(text.begin(), text.end(), &sax,
                                            nlohmann::json::input_format_t::json, /*strict=*/true);
  if (!ok || !sax.error.empty()) fail(sax.error.empty() ? "header is not valid JSON" : sax.error);

  SafeTensorsHeader header;
  header.header_length = n;
  header.metadata = std::move(sax.metadata);
  header.tensors.reserve(sax.tensors.size());
  for (RawTensor& raw : sax.tensors) {
    const std::string who = "tensor " + shown_name(raw.name);
    TensorEntry t;
    t.name = std::move(raw.name);
    auto dt =
        std::find_if(kDTypes.begin(), kDTypes.end(), [&](const DTypeInfo& d) { return d.name == raw.dtype; });
    if (dt == kDTypes.end()) fail(who + ": unknown or unsupported dtype " + shown_name(raw.dtype));
    t.dtype = dt->dtype;
    uint64_t numel = 1;
    for (uint64_t d : raw.shape) {
      if (d > static_cast<uint64_t>(INT64_MAX))
        fail(who + ": shape dimension " + std::to_string(d) + " is too large");
      if (__builtin_mul_overflow(numel, d, &numel)) fail(who + ": shape element count overflows 64 bits");
      t.shape.push_back(static_cast<int64_t>(d));
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dt->size), &bytes))
      fail(who + ": shape byte size overflows 64 bits");
    if (raw.offsets.size() != 2)
      fail(who + ": data_offsets must be [begin, end] (found " + std::to_string(raw.offsets.size()) +
           " values)");
    t.begin = raw.offsets[0];
    t.end = raw.offsets[1];
    if (t.begin > t.end) fail(who + ": data_offsets " + offsets_text(t) + " has begin > end");
    if (t.end - t.begin != bytes)
      fail(who + ": data_offsets " + offsets_text(t) + " span " + std::to_string(t.end - t.begin) +
           " bytes but dtype " + std::string(dt->name) + " with " + std::to_string(numel) +
           " elements needs " + std::to_string(bytes));
    header.tensors.push_back(std::move(t));
  }

  // The tensors must tile the data section exactly: sorted by offset, each starts where the previous ended.
  std::vector<const TensorEntry*> by_offset;
  by_offset.reserve(header.tensors.size());
  for (const auto& t : header.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t data_end = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry* t : by_offset) {
    if (t->begin < data_end)
      fail("tensor " + shown_name(t->name) + " data_offsets " + offsets_text(*t) + " overlap tensor " +
           shown_name(previous->name) + " " + offsets_text(*previous));
    if (t->begin > data_end)
      fail("hole in the data section: bytes [" + std::to_string(data_end) + ", " + std::to_string(t->begin) +
           ") belong to no tensor (next is " + shown_name(t->name) + ")");
    data_end = t->end;
    previous = t;
  }

  uint64_t expected_size = 0;
  if (__builtin_add_overflow(8 + n, data_end, &expected_size))
    fail("tensor " + shown_name(previous->name) + " data_offsets " + offsets_text(*previous) +
         " are out of range");
  if (expected_size > file_size)
    fail("truncated: header says data ends at byte " + std::to_string(expected_size) + " but file has " +
         std::to_string(file_size) + " bytes");
  if (expected_size < file_size)
    fail("trailing bytes: header says data ends at byte " + std::to_string(expected_size) + " but file has " +
         std::to_string(file_size) + " bytes (" + std::to_string(file_size - expected_size) + " extra)");

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) { return a.name < b.name; });
  return header;
}

}  // namespace kiln
