// safetensors: a validating, memory-mapped reader and an atomic writer.
// Format: u64 LE header length N | N bytes JSON header (space padded) | raw little-endian data.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors_header.h"

namespace kiln {

// Name-ordered tensors, the unit every loader and writer in kiln exchanges.
using StateDict = std::map<std::string, torch::Tensor>;
using Metadata = std::map<std::string, std::string>;

// A validated, memory-mapped safetensors file. Tensors returned by `tensor()` are zero-copy
// views into the mapping (they keep it alive) when the dtype is one torch has; copy them
// (or `.to(dtype)`) before writing to them: the mapping is read-only.
class SafeTensorsFile {
 public:
  // Opens, maps and validates the whole file; throws kiln::Error naming `path` and the problem.
  static SafeTensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  uint64_t file_size() const;
  // The whole mapped file (header included), e.g. for hashing the data section without re-reading it.
  std::string_view bytes() const;
  const SafeTensorsHeader& header() const { return header_; }
  const Metadata& metadata() const { return header_.metadata; }
  const std::vector<TensorEntry>& entries() const { return header_.tensors; }  // sorted by name
  const TensorEntry* find(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }

  // The tensor as stored (zero-copy, read-only); throws if the name is absent.
  torch::Tensor tensor(const std::string& name) const;
  // Every tensor, as stored.
  StateDict tensors() const;

 private:
  struct Mapping;
  std::filesystem::path path_;
  SafeTensorsHeader header_;
  std::shared_ptr<Mapping> mapping_;
};

struct SafeTensorsWriteOptions {
  Metadata metadata;  // written as "__metadata__" (string -> string)
};

// Writes `tensors` (any device, contiguous or not) to `path` via a temporary file and rename.
// Supported dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
void save_safetensors(const std::filesystem::path& path, const StateDict& tensors,
                      const SafeTensorsWriteOptions& options = {});

}  // namespace kiln
