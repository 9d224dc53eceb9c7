// TensorBoard event files, written and read by hand: the format is a TFRecord stream of `Event`
// protobuf messages, and the handful of fields a scalar needs is small enough that pulling in
// protobuf or TensorFlow would cost far more than encoding them here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

// CRC-32C (Castagnoli), the checksum of TFRecord framing.
uint32_t crc32c(const void* data, size_t size);

// TFRecord stores CRCs masked, because a plain CRC over data that itself embeds CRCs is weak.
constexpr uint32_t mask_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

// Seconds since the Unix epoch, the wall time TensorBoard and metrics.jsonl record.
double unix_seconds_now();

// One event file per writer, named `events.out.tfevents.<unix seconds>.<hostname>.<pid>.<n>` so that
// TensorBoard finds it and two writers (even in one process) never share a file.
// Every record is flushed as it is written: a crashed run loses nothing already logged.
// Not thread-safe.
class TensorBoardWriter {
 public:
  // Creates `log_dir` if needed and writes the file_version record.
  explicit TensorBoardWriter(const std::filesystem::path& log_dir);
  ~TensorBoardWriter();
  TensorBoardWriter(TensorBoardWriter&&) noexcept = default;
  TensorBoardWriter& operator=(TensorBoardWriter&&) noexcept = default;

  // TensorBoard stores scalars as float; `value` is narrowed to that.
  void add_scalar(const std::string& tag, double value, int64_t step, double wall_time = unix_seconds_now());
  void flush();
  const std::filesystem::path& path() const { return path_; }

 private:
  struct FileCloser {
    void operator()(std::FILE* f) const;
  };
  void write_record(std::string_view payload);

  std::filesystem::path path_;
  std::unique_ptr<std::FILE, FileCloser> file_;
};

// The payloads of every TFRecord in `file`, with both CRCs of each record checked.
// kiln::Error naming the file and the record's byte offset on a CRC mismatch or truncation.
std::vector<std::string> read_tfrecords(const std::filesystem::path& file);

struct ScalarEvent {
  std::string tag;
  int64_t step = 0;
  double wall_time = 0;
  float value = 0;
};

// Every simple_value scalar in an event file, in file order. Other events and unknown fields are
// skipped; malformed framing or protobuf is a kiln::Error naming the file and record offset.
std::vector<ScalarEvent> read_tensorboard_scalars(const std::filesystem::path& event_file);

}  // namespace kiln
