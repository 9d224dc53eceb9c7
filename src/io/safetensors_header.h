// The safetensors header parser, kept free of torch and of file I/O so it can be fuzzed alone.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

enum class SafeTensorsDType {
  BOOL,
  U8,
  I8,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  F64,
  I64,
  U64,
  F8_E5M2,
  F8_E4M3
};

struct TensorEntry {
  std::string name;
  SafeTensorsDType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t numel() const;
};

struct SafeTensorsHeader {
  uint64_t header_length = 0;  // N, the JSON byte count (data section starts at 8 + N)
  std::map<std::string, std::string> metadata;
  std::vector<TensorEntry> tensors;  // sorted by name
};

std::string_view dtype_name(SafeTensorsDType dtype);
size_t dtype_size(SafeTensorsDType dtype);

// Parses and validates the first bytes of a file of `file_size` bytes. `prefix` must hold at
// least the 8-byte length and the JSON header. Throws kiln::Error("<source>: <problem>") for any
// defect: length bounds, JSON, dtype names, shapes, offset ranges, overlaps, holes, overflow.
SafeTensorsHeader parse_safetensors_header(std::string_view prefix, uint64_t file_size,
                                           const std::string& source);

}  // namespace kiln
