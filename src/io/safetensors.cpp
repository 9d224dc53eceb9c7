// safetensors reader (mmap + zero-copy torch views) and writer (sorted, padded, atomic).
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <optional>

#include "util/atomic_file.h"
#include "util/error.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

namespace kiln {
namespace {

// Torch dtypes that exist in libtorch 1.13; the unsigned wide and fp8 types do not.
std::optional<torch::ScalarType> to_torch(SafeTensorsDType dtype) {
  switch (dtype) {
    case SafeTensorsDType::F64:
      return torch::kFloat64;
    case SafeTensorsDType::F32:
      return torch::kFloat32;
    case SafeTensorsDType::F16:
      return torch::kFloat16;
    case SafeTensorsDType::BF16:
      return torch::kBFloat16;
    case SafeTensorsDType::I64:
      return torch::kInt64;
    case SafeTensorsDType::I32:
      return torch::kInt32;
    case SafeTensorsDType::I16:
      return torch::kInt16;
    case SafeTensorsDType::I8:
      return torch::kInt8;
    case SafeTensorsDType::U8:
      return torch::kUInt8;
    case SafeTensorsDType::BOOL:
      return torch::kBool;
    default:
      return std::nullopt;
  }
}

std::optional<SafeTensorsDType> from_torch(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat64:
      return SafeTensorsDType::F64;
    case torch::kFloat32:
      return SafeTensorsDType::F32;
    case torch::kFloat16:
      return SafeTensorsDType::F16;
    case torch::kBFloat16:
      return SafeTensorsDType::BF16;
    case torch::kInt64:
      return SafeTensorsDType::I64;
    case torch::kInt32:
      return SafeTensorsDType::I32;
    case torch::kInt16:
      return SafeTensorsDType::I16;
    case torch::kInt8:
      return SafeTensorsDType::I8;
    case torch::kUInt8:
      return SafeTensorsDType::U8;
    case torch::kBool:
      return SafeTensorsDType::BOOL;
    default:
      return std::nullopt;
  }
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

struct SafeTensorsFile::Mapping {
  const char* data = nullptr;
  uint64_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data) ::munmap(const_cast<char*>(data), size);
  }
};

SafeTensorsFile SafeTensorsFile::open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_file_error(path, "cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    throw_file_error(path, "cannot stat: " + why);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_file_error(path, "not a regular file");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<uint64_t>(st.st_size);
  if (mapping->size < 8) {
    ::close(fd);
    throw_file_error(path, "not a safetensors file: " + std::to_string(mapping->size) +
                               " bytes, too short for the 8-byte header length");
  }
  void* p = ::mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string why = errno_text();
  ::close(fd);  // the mapping stays valid without the descriptor
  if (p == MAP_FAILED) throw_file_error(path, "cannot mmap: " + why);
  mapping->data = static_cast<const char*>(p);

  SafeTensorsFile file;
  file.path_ = path;
  file.header_ =
      parse_safetensors_header(std::string_view(mapping->data, mapping->size), mapping->size, path.string());
  file.mapping_ = std::move(mapping);
  return file;
}

uint64_t SafeTensorsFile::file_size() const { return mapping_ ? mapping_->size : 0; }

std::string_view SafeTensorsFile::bytes() const {
  return mapping_ ? std::string_view(mapping_->data, mapping_->size) : std::string_view();
}

const TensorEntry* SafeTensorsFile::find(const std::string& name) const {
  auto it = std::lower_bound(header_.tensors.begin(), header_.tensors.end(), name,
                             [](const TensorEntry& e, const std::string& n) { return e.name < n; });
  return it != header_.tensors.end() && it->name == name ? &*it : nullptr;
}

torch::Tensor SafeTensorsFile::tensor(const std::string& name) const {
  const TensorEntry* entry = find(name);
  if (!entry) throw_file_error(path_, "no tensor named '" + name + "'");
  const auto type = to_torch(entry->dtype);
  if (!type)
    throw_file_error(path_, "tensor '" + name + "' has dtype " + std::string(dtype_name(entry->dtype)) +
                                ", which is not supported by this torch");
  const auto options = torch::TensorOptions().dtype(*type);
  if (entry->end == entry->begin) return torch::empty(entry->shape, options);

  const char* data = mapping_->data + 8 + header_.header_length + entry->begin;
  // Files from other writers may place data unaligned; a torch view would then be undefined behaviour.
  if (reinterpret_cast<uintptr_t>(data) % dtype_size(entry->dtype) != 0) {
    torch::Tensor copy = torch::empty(entry->shape, options);
    std::memcpy(copy.data_ptr(), data, entry->end - entry->begin);
    return copy;
  }
  std::shared_ptr<Mapping> keep_alive = mapping_;
  return torch::from_blob(
      const_cast<char*>(data), entry->shape, [keep_alive](void*) {}, options);
}

StateDict SafeTensorsFile::tensors() const {
  StateDict out;
  for (const auto& e : header_.tensors) out.emplace(e.name, tensor(e.name));
  return out;
}

void save_safetensors(const std::filesystem::path& path, const StateDict& tensors,
                      const SafeTensorsWriteOptions& options) {
  struct Item {
    const std::string* name;
    SafeTensorsDType dtype;
    torch::Tensor data;  // CPU, contiguous
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw_file_error(path, "'__metadata__' cannot be used as a tensor name");
    if (!t.defined()) throw_file_error(path, "tensor '" + name + "' is undefined");
    const auto dtype = from_torch(t.scalar_type());
    if (!dtype)
      throw_file_error(path, "tensor '" + name + "' has dtype " +
                                 std::string(c10::toString(t.scalar_type())) +
                                 ", which safetensors files written by kiln do not support");
    items.push_back({&name, *dtype, t.detach().to(torch::kCPU).contiguous()});
  }
  // The reference writer's order: larger elements first keeps every tensor aligned, then by name.
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    const size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : *a.name < *b.name;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!options.metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : options.metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Item& item : items) {
    const uint64_t bytes = static_cast<uint64_t>(item.data.numel()) * dtype_size(item.dtype);
    header[*item.name] = {{"dtype", std::string(dtype_name(item.dtype))},
                          {"shape", item.data.sizes().vec()},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception&) {
    throw_file_error(path, "a tensor name or metadata string is not valid UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();

  write_file_atomically(path, [&](std::FILE* f) {
    auto put = [&](const void* p, size_t size) {
      if (size > 0 && std::fwrite(p, 1, size, f) != size)
        throw_file_error(path, "write failed: " + errno_text());
    };
    put(&n, 8);
    put(text.data(), text.size());
    for (const Item& item : items)
      put(item.data.data_ptr(), static_cast<size_t>(item.data.numel()) * dtype_size(item.dtype));
  });
}

}  // namespace kiln
