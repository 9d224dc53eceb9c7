// TensorBoard event files: TFRecord framing, CRC-32C and the few protobuf fields of a scalar Event.
#include "logging/tensorboard.h"

#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <system_error>

#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    table[i] = crc;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

std::string errno_text() { return std::strerror(errno); }

// ---- protobuf wire format: only what Event / Summary / Summary.Value need ----

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_key(std::string& out, uint32_t field, WireType type) {
  put_varint(out, (uint64_t{field} << 3) | type);
}

// Little-endian regardless of the host, as both protobuf fixed fields and TFRecord framing require.
template <typename UInt>
void put_le(std::string& out, UInt v) {
  for (size_t i = 0; i < sizeof(UInt); ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void put_bytes_field(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

// Event fields 1 and 2. Written even when zero (proto3 would omit them): parsers accept both, and a
// fixed layout keeps records easy to check by eye.
std::string event_header(double wall_time, int64_t step) {
  std::string event;
  put_key(event, 1, kFixed64);
  put_le(event, std::bit_cast<uint64_t>(wall_time));
  put_key(event, 2, kVarint);
  put_varint(event, static_cast<uint64_t>(step));
  return event;
}

template <typename UInt>
UInt get_le(const char* p) {
  UInt v = 0;
  for (size_t i = 0; i < sizeof(UInt); ++i) v |= UInt{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

// Reads one message's fields; every failure names the file and the record it came from.
class ProtoReader {
 public:
  ProtoReader(std::string_view data, const fs::path& file, size_t record_offset)
      : data_(data), file_(file), record_offset_(record_offset) {}

  struct Field {
    uint32_t number;
    uint32_t type;
    uint64_t varint = 0;          // kVarint, kFixed64, kFixed32 (raw bits)
    std::string_view bytes = {};  // kLengthDelimited
  };

  std::optional<Field> next() {
    if (pos_ == data_.size()) return std::nullopt;
    const uint64_t key = varint();
    Field f{static_cast<uint32_t>(key >> 3), static_cast<uint32_t>(key & 7)};
    if (f.number == 0) fail("protobuf field number 0");
    switch (f.type) {
      case kVarint:
        f.varint = varint();
        break;
      case kFixed64:
        f.varint = get_le<uint64_t>(take(8).data());
        break;
      case kFixed32:
        f.varint = get_le<uint32_t>(take(4).data());
        break;
      case kLengthDelimited:
        f.bytes = take(varint());
        break;
      default:
        fail("unsupported protobuf wire type " + std::to_string(f.type) + " (field " +
             std::to_string(f.number) + ")");
    }
    return f;
  }

  ProtoReader nested(std::string_view bytes) const { return ProtoReader(bytes, file_, record_offset_); }

  [[noreturn]] void fail(const std::string& problem) const {
    throw_file_error(file_, "record at byte " + std::to_string(record_offset_) + ": " + problem);
  }

 private:
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ == data_.size()) fail("protobuf varint runs past the end of its message");
      const auto byte = static_cast<unsigned char>(data_[pos_++]);
      v |= uint64_t{byte & 0x7Fu} << shift;
      if (!(byte & 0x80)) return v;
    }
    fail("protobuf varint longer than 10 bytes");
  }

  std::string_view take(uint64_t n) {
    if (n > data_.size() - pos_) fail("protobuf field runs past the end of its message");
    std::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }

  std::string_view data_;
  size_t pos_ = 0;
  const fs::path& file_;
  size_t record_offset_;
};

// Summary.Value: tag = 1, simple_value = 2. Values without simple_value (images, tensors) are skipped.
void read_summary(ProtoReader summary, int64_t step, double wall_time, std::vector<ScalarEvent>& out) {
  while (auto field = summary.next()) {
    if (field->number != 1 || field->type != kLengthDelimited) continue;
    ProtoReader value = summary.nested(field->bytes);
    ScalarEvent event{{}, step, wall_time, 0.0f};
    bool has_simple_value = false;
    while (auto v = value.next()) {
      if (v->number == 1 && v->type == kLengthDelimited) {
        event.tag = std::string(v->bytes);
      } else if (v->number == 2 && v->type == kFixed32) {
        event.value = std::bit_cast<float>(static_cast<uint32_t>(v->varint));
        has_simple_value = true;
      }
    }
    if (has_simple_value) out.push_back(std::move(event));
  }
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) crc = kCrc32cTable[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

double unix_seconds_now() {
  // C++20 fixes system_clock's epoch to the Unix epoch.
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// ---- writer ----

void TensorBoardWriter::FileCloser::operator()(std::FILE* f) const { std::fclose(f); }

TensorBoardWriter::TensorBoardWriter(const fs::path& log_dir) {
  std::error_code ec;
  fs::create_directories(log_dir, ec);
  if (ec) throw_file_error(log_dir, "cannot create TensorBoard log directory: " + ec.message());

  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  const auto seconds =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  const std::string prefix = "events.out.tfevents." + std::to_string(seconds.count()) + "." + host + "." +
                             std::to_string(::getpid()) + ".";

  // Exclusive creation ("x") takes the first free counter: two writers in one second and process get
  // distinct files without a process-wide counter, and an existing file is never overwritten.
  for (int n = 0; !file_; ++n) {
    const fs::path candidate = log_dir / (prefix + std::to_string(n));
    std::FILE* f = std::fopen(candidate.c_str(), "wbx");
    if (f) {
      file_.reset(f);
      path_ = candidate;
    } else if (errno != EEXIST || n >= 10000) {
      throw_file_error(candidate, "cannot create TensorBoard event file: " + errno_text());
    }
  }

  // TensorBoard reads the version record to choose how to interpret the rest of the file.
  std::string event = event_header(unix_seconds_now(), 0);
  put_bytes_field(event, 3, "brain.Event:2");
  write_record(event);
}

TensorBoardWriter::~TensorBoardWriter() = default;  // fclose flushes

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step, double wall_time) {
  std::string summary_value;
  put_bytes_field(summary_value, 1, tag);
  put_key(summary_value, 2, kFixed32);
  put_le(summary_value, std::bit_cast<uint32_t>(static_cast<float>(value)));

  std::string summary;
  put_bytes_field(summary, 1, summary_value);

  std::string event = event_header(wall_time, step);
  put_bytes_field(event, 5, summary);
  write_record(event);
}

void TensorBoardWriter::flush() {
  if (file_ && std::fflush(file_.get()) != 0) throw_file_error(path_, "write failed: " + errno_text());
}

void TensorBoardWriter::write_record(std::string_view payload) {
  if (!file_) throw_file_error(path_, "TensorBoard writer was moved from");
  std::string record;
  record.reserve(payload.size() + 16);
  put_le(record, uint64_t{payload.size()});
  put_le(record, mask_crc32c(crc32c(record.data(), 8)));
  record.append(payload);
  put_le(record, mask_crc32c(crc32c(payload.data(), payload.size())));
  if (std::fwrite(record.data(), 1, record.size(), file_.get()) != record.size())
    throw_file_error(path_, "write failed: " + errno_text());
  flush();
}

// ---- reader ----

std::vector<std::string> read_tfrecords(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw_file_error(file, "cannot open: " + errno_text());
  const std::string data{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw_file_error(file, "read failed: " + errno_text());

  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < data.size()) {
    const size_t offset = pos;
    auto fail = [&](const std::string& problem) {
      throw_file_error(file, "record at byte " + std::to_string(offset) + ": " + problem);
    };
    const size_t remaining = data.size() - pos;
    if (remaining < 12) fail("truncated record header (" + std::to_string(remaining) + " bytes left)");
    const uint64_t length = get_le<uint64_t>(data.data() + pos);
    if (get_le<uint32_t>(data.data() + pos + 8) != mask_crc32c(crc32c(data.data() + pos, 8)))
      fail("length CRC mismatch");
    pos += 12;
    if (length > data.size() - pos || data.size() - pos - length < 4)
      fail("truncated: record of " + std::to_string(length) + " bytes but only " +
           std::to_string(data.size() - pos) + " bytes left");
    const char* payload = data.data() + pos;
    if (get_le<uint32_t>(payload + length) != mask_crc32c(crc32c(payload, length))) fail("data CRC mismatch");
    records.emplace_back(payload, length);
    pos += length + 4;
  }
  return records;
}

std::vector<ScalarEvent> read_tensorboard_scalars(const fs::path& event_file) {
  const std::vector<std::string> records = read_tfrecords(event_file);
  std::vector<ScalarEvent> scalars;
  size_t offset = 0;
  for (const std::string& record : records) {
    ProtoReader event(record, event_file, offset);
    double wall_time = 0;
    int64_t step = 0;
    std::vector<std::string_view> summaries;
    // Fields may come in any order, so step and wall_time are known only after the whole message.
    while (auto field = event.next()) {
      if (field->number == 1 && field->type == kFixed64) {
        wall_time = std::bit_cast<double>(field->varint);
      } else if (field->number == 2 && field->type == kVarint) {
        step = static_cast<int64_t>(field->varint);
      } else if (field->number == 5 && field->type == kLengthDelimited) {
        summaries.push_back(field->bytes);  // repeated occurrences of a message field merge
      }
    }
    for (std::string_view summary : summaries) read_summary(event.nested(summary), step, wall_time, scalars);
    offset += record.size() + 16;
  }
  return scalars;
}

}  // namespace kiln
