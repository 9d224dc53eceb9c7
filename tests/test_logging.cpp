// kiln_logging: CRC-32C, TensorBoard event files (exact bytes, round trips, corruption) and metrics.jsonl.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "logging/metrics_log.h"
#include "logging/tensorboard.h"
#include "util/error.h"
#include "test_support.h"

namespace fs = std::filesystem;

namespace {

using kiln::test::error_of;

using kiln::test::read_bytes;
using kiln::test::write_bytes;

class LoggingFiles : public kiln::test::TempDirTest {
 protected:

  // A file with a first record and ten scalars, for the corruption tests.
  fs::path small_event_file() {
    kiln::TensorBoardWriter writer(dir_ / "tb");
    for (int step = 0; step < 10; ++step) writer.add_scalar("loss", 0.5 * step, step, 1000.0 + step);
    return writer.path();
  }

};

std::string bytes(std::initializer_list<int> values) {
  std::string s;
  for (int v : values) s.push_back(static_cast<char>(v));
  return s;
}

uint32_t le32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<unsigned char>(s[at + i])} << (8 * i);
  return v;
}

TEST(Crc32c, StandardVectors) {
  EXPECT_EQ(kiln::crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0');
  EXPECT_EQ(kiln::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  // RFC 3720 (iSCSI) B.4 vectors.
  const std::string ones(32, '\xFF');
  EXPECT_EQ(kiln::crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(kiln::crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
  EXPECT_EQ(kiln::crc32c(nullptr, 0), 0u);
}

TEST(Crc32c, Mask) {
  // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8, all mod 2^32.
  EXPECT_EQ(kiln::mask_crc32c(0xE3069283u), 0xC78AB0E5u);
  EXPECT_EQ(kiln::mask_crc32c(0), 0xA282EAD8u);
  static_assert(kiln::mask_crc32c(1) == (0x00020000u + 0xA282EAD8u));
}

TEST_F(LoggingFiles, FileNameAndVersionRecord) {
  kiln::TensorBoardWriter writer(dir_ / "new" / "nested");
  EXPECT_EQ(writer.path().parent_path(), dir_ / "new" / "nested");
  EXPECT_TRUE(writer.path().filename().string().starts_with("events.out.tfevents."));
  writer.flush();

  const auto records = kiln::read_tfrecords(writer.path());
  ASSERT_EQ(records.size(), 1u);
  const std::string& first = records[0];
  // wall_time (0x09 + 8 bytes), step 0 (0x10 0x00), file_version (0x1A, length 13).
  ASSERT_EQ(first.size(), 9u + 2u + 2u + 13u);
  EXPECT_EQ(first[0], '\x09');
  EXPECT_EQ(first.substr(9), bytes({0x10, 0x00, 0x1A, 13}) + "brain.Event:2");
  double wall_time = 0;
  std::memcpy(&wall_time, first.data() + 1, 8);
  const double now = kiln::unix_seconds_now();
  EXPECT_GT(wall_time, now - 60);
  EXPECT_LE(wall_time, now);

  EXPECT_TRUE(kiln::read_tensorboard_scalars(writer.path()).empty());
}

TEST_F(LoggingFiles, TwoWritersInOneDirectoryGetTwoFiles) {
  kiln::TensorBoardWriter a(dir_);
  kiln::TensorBoardWriter b(dir_);
  EXPECT_NE(a.path(), b.path());
}

TEST_F(LoggingFiles, ExactBytesOfOneScalarRecord) {
  fs::path file;
  {
    kiln::TensorBoardWriter writer(dir_);
    writer.add_scalar("a", 1.0, 1, 0.0);
    file = writer.path();
  }
  const std::string value = bytes({0x0A, 0x01, 'a', 0x15, 0x00, 0x00, 0x80, 0x3F});  // tag "a", 1.0f
  const std::string summary = bytes({0x0A, 0x08}) + value;
  const std::string expected = bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0,  // wall_time 0.0
                                      0x10, 0x01,                    // step 1
                                      0x2A, 0x0A}) +                 // summary, 10 bytes
                               summary;
  ASSERT_EQ(expected.size(), 23u);

  const auto records = kiln::read_tfrecords(file);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1], expected);

  // The framing, checked on the raw file: the second record starts after the first one's 16 + n bytes.
  const std::string raw = read_bytes(file);
  const size_t at = 16 + records[0].size();
  ASSERT_EQ(raw.size(), at + 16 + expected.size());
  EXPECT_EQ(raw.substr(at, 8), bytes({23, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(le32(raw, at + 8), kiln::mask_crc32c(kiln::crc32c(raw.data() + at, 8)));
  EXPECT_EQ(le32(raw, at + 8), 0x1EF8CEE7u);  // masked CRC-32C of the length 23 as 8 LE bytes
  EXPECT_EQ(raw.substr(at + 12, expected.size()), expected);
  EXPECT_EQ(le32(raw, at + 12 + expected.size()),
            kiln::mask_crc32c(kiln::crc32c(expected.data(), expected.size())));
}

TEST_F(LoggingFiles, ScalarsRoundTrip) {
  fs::path file;
  {
    kiln::TensorBoardWriter writer(dir_);
    for (int step = 0; step < 10; ++step) {
      writer.add_scalar("loss/step", 1.0 / (step + 3), step, 1700000000.25 + step);
      writer.add_scalar("lr/unet", 1e-4 * step, step, 1700000000.5 + step);
    }
    // Large and negative steps need multi-byte and 10-byte varints.
    writer.add_scalar("loss/step", -2.5, int64_t{1} << 40, 1.0);
    writer.add_scalar("loss/step", 3.0, -7, 2.0);
    file = writer.path();
  }

  const auto scalars = kiln::read_tensorboard_scalars(file);
  ASSERT_EQ(scalars.size(), 22u);
  for (int step = 0; step < 10; ++step) {
    const auto& loss = scalars[2 * step];
    EXPECT_EQ(loss.tag, "loss/step");
    EXPECT_EQ(loss.step, step);
    EXPECT_EQ(loss.wall_time, 1700000000.25 + step);
    EXPECT_EQ(loss.value, static_cast<float>(1.0 / (step + 3)));
    const auto& lr = scalars[2 * step + 1];
    EXPECT_EQ(lr.tag, "lr/unet");
    EXPECT_EQ(lr.step, step);
    EXPECT_EQ(lr.wall_time, 1700000000.5 + step);
    EXPECT_EQ(lr.value, static_cast<float>(1e-4 * step));
  }
  EXPECT_EQ(scalars[20].step, int64_t{1} << 40);
  EXPECT_EQ(scalars[20].value, -2.5f);
  EXPECT_EQ(scalars[21].step, -7);
  EXPECT_EQ(scalars[21].value, 3.0f);
}

TEST_F(LoggingFiles, ValuesAreOnDiskBeforeTheWriterCloses) {
  kiln::TensorBoardWriter writer(dir_);
  writer.add_scalar("loss", 0.25, 3, 5.0);
  const auto scalars = kiln::read_tensorboard_scalars(writer.path());
  ASSERT_EQ(scalars.size(), 1u);
  EXPECT_EQ(scalars[0].value, 0.25f);
}

TEST_F(LoggingFiles, FlippedByteIsAnError) {
  const fs::path file = small_event_file();
  const std::string good = read_bytes(file);
  // One flip in a length field, one in a payload, one in a trailing CRC: each must be caught.
  for (size_t at : {size_t{2}, good.size() / 2, good.size() - 1}) {
    std::string bad = good;
    bad[at] ^= 0x20;
    write_bytes(file, bad);
    const auto error = error_of([&] { kiln::read_tensorboard_scalars(file); });
    ASSERT_TRUE(error.has_value()) << "flip at byte " << at;
    EXPECT_NE(error->find(file.string()), std::string::npos) << *error;
    EXPECT_NE(error->find("record at byte"), std::string::npos) << *error;
  }
}

TEST_F(LoggingFiles, TruncatedFileIsAnError) {
  const fs::path file = small_event_file();
  const std::string good = read_bytes(file);
  for (size_t keep : {good.size() - 1, good.size() - 5, good.size() - 20, size_t{5}}) {
    write_bytes(file, good.substr(0, keep));
    const auto error = error_of([&] { kiln::read_tfrecords(file); });
    ASSERT_TRUE(error.has_value()) << "kept " << keep << " bytes";
    EXPECT_NE(error->find(file.string()), std::string::npos) << *error;
    EXPECT_NE(error->find("truncated"), std::string::npos) << *error;
  }
}

TEST_F(LoggingFiles, MalformedProtobufIsAnErrorButUnknownFieldsAreSkipped) {
  const fs::path file = dir_ / "events.out.tfevents.handmade";
  auto record = [](const std::string& payload) {
    std::string r;
    for (int i = 0; i < 8; ++i) r.push_back(static_cast<char>((uint64_t{payload.size()} >> (8 * i)) & 0xFF));
    auto put32 = [&r](uint32_t v) {
      for (int i = 0; i < 4; ++i) r.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
    };
    put32(kiln::mask_crc32c(kiln::crc32c(r.data(), 8)));
    r += payload;
    put32(kiln::mask_crc32c(kiln::crc32c(payload.data(), payload.size())));
    return r;
  };
  // step 4, then unknown fields of every wire type (varint 6, fixed64 7, bytes 8, fixed32 9), and a
  // Value with an unknown field 7 before the tag; summary field 5 comes before step is known.
  const std::string value = bytes({0x3A, 0x01, 'x', 0x0A, 0x01, 'b', 0x15, 0x00, 0x00, 0x20, 0x40});  // 2.5f
  const std::string summary = bytes({0x0A, static_cast<int>(value.size())}) + value;
  const std::string event = bytes({0x2A, static_cast<int>(summary.size())}) + summary +
                            bytes({0x10, 0x04, 0x30, 0x96, 0x01, 0x39, 1,    2, 3, 4, 5, 6,
                                   7,    8,    0x42, 0x02, 'z',  'z',  0x4D, 1, 2, 3, 4});
  write_bytes(file, record(event));
  const auto scalars = kiln::read_tensorboard_scalars(file);
  ASSERT_EQ(scalars.size(), 1u);
  EXPECT_EQ(scalars[0].tag, "b");
  EXPECT_EQ(scalars[0].step, 4);
  EXPECT_EQ(scalars[0].value, 2.5f);

  // A length-delimited field that claims more bytes than its message has: good CRCs, bad protobuf.
  write_bytes(file, record(bytes({0x2A, 0x10, 0x0A})));
  const auto error = error_of([&] { kiln::read_tensorboard_scalars(file); });
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find(file.string()), std::string::npos) << *error;
  EXPECT_NE(error->find("record at byte 0"), std::string::npos) << *error;
}

TEST_F(LoggingFiles, UnwritableDirectoryIsAnError) {
  const fs::path blocker = dir_ / "not_a_dir";
  write_bytes(blocker, "x");
  const auto error = error_of([&] { kiln::TensorBoardWriter writer(blocker / "tb"); });
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find(blocker.string()), std::string::npos) << *error;
  EXPECT_TRUE(error_of([&] { kiln::MetricsLog log(blocker / "run"); }).has_value());
}

TEST_F(LoggingFiles, MetricsLogWritesJsonlAndTensorBoard) {
  const fs::path run = dir_ / "run";
  const double before = kiln::unix_seconds_now();
  fs::path event_file;
  {
    kiln::MetricsLog log(run);
    ASSERT_NE(log.tensorboard(), nullptr);
    event_file = log.tensorboard()->path();
    log.log(0, {{"loss/step", 0.125}, {"lr/unet", 1e-4}}, 0);
    log.log(1, {{"loss/step", 0.1}, {"lr/unet", 2e-4}});
  }
  const double after = kiln::unix_seconds_now();
  EXPECT_EQ(event_file.parent_path(), run / "tensorboard");

  const std::string text = read_bytes(run / "metrics.jsonl");
  EXPECT_TRUE(text.starts_with("{\"step\":0,\"epoch\":0,\"time\":")) << text;

  const auto lines = kiln::read_metrics_jsonl(run / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["step"], 0);
  EXPECT_EQ(lines[0]["epoch"], 0);
  EXPECT_EQ(lines[0]["loss/step"].get<double>(), 0.125);
  EXPECT_EQ(lines[0]["lr/unet"].get<double>(), 1e-4);
  EXPECT_EQ(lines[1]["step"], 1);
  EXPECT_FALSE(lines[1].contains("epoch"));
  EXPECT_EQ(lines[1]["loss/step"].get<double>(), 0.1);  // full double precision in JSON
  for (const auto& line : lines) {
    EXPECT_GE(line["time"].get<double>(), before);
    EXPECT_LE(line["time"].get<double>(), after);
  }

  const auto scalars = kiln::read_tensorboard_scalars(event_file);
  ASSERT_EQ(scalars.size(), 4u);
  EXPECT_EQ(scalars[0].tag, "loss/step");
  EXPECT_EQ(scalars[0].value, 0.125f);
  EXPECT_EQ(scalars[1].tag, "lr/unet");
  EXPECT_EQ(scalars[1].value, 1e-4f);
  EXPECT_EQ(scalars[2].step, 1);
  EXPECT_EQ(scalars[2].value, 0.1f);
  EXPECT_EQ(scalars[2].wall_time, lines[1]["time"].get<double>());  // one clock reading per step
}

TEST_F(LoggingFiles, MetricsLogWithoutTensorBoard) {
  kiln::MetricsLog log(dir_, /*tensorboard=*/false);
  EXPECT_EQ(log.tensorboard(), nullptr);
  log.log(5, {{"loss", 1.0}});
  EXPECT_FALSE(fs::exists(dir_ / "tensorboard"));
  EXPECT_EQ(kiln::read_metrics_jsonl(dir_ / "metrics.jsonl").size(), 1u);
}

TEST_F(LoggingFiles, MetricsLogAppendsOnResume) {
  { kiln::MetricsLog(dir_).log(0, {{"loss", 1.0}}); }
  { kiln::MetricsLog(dir_).log(1, {{"loss", 0.5}}); }
  const auto lines = kiln::read_metrics_jsonl(dir_ / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["step"], 0);
  EXPECT_EQ(lines[1]["step"], 1);
  // Each run writes its own event file; together they hold every step.
  size_t event_files = 0, scalars = 0;
  for (const auto& e : fs::directory_iterator(dir_ / "tensorboard")) {
    ++event_files;
    scalars += kiln::read_tensorboard_scalars(e.path()).size();
  }
  EXPECT_EQ(event_files, 2u);
  EXPECT_EQ(scalars, 2u);
}

TEST_F(LoggingFiles, MetricsLogRejectsReservedNamesAndWritesNonFiniteAsNull) {
  kiln::MetricsLog log(dir_, false);
  for (const char* name : {"step", "epoch", "time"}) {
    const auto error = error_of([&] { log.log(0, {{name, 1.0}}); });
    ASSERT_TRUE(error.has_value()) << name;
    EXPECT_NE(error->find("reserved"), std::string::npos) << *error;
  }
  log.log(3, {{"loss", std::numeric_limits<double>::quiet_NaN()}});
  const auto lines = kiln::read_metrics_jsonl(log.jsonl_path());
  ASSERT_EQ(lines.size(), 1u);  // the rejected calls wrote nothing
  EXPECT_TRUE(lines[0]["loss"].is_null());
}

TEST_F(LoggingFiles, TruncatedLastLineIsIgnored) {
  const fs::path file = dir_ / "metrics.jsonl";
  write_bytes(file, "{\"step\":0,\"loss\":1.0}\n\n{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"lo");
  const auto lines = kiln::read_metrics_jsonl(file);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1]["step"], 1);

  // A complete last line without its newline still counts.
  write_bytes(file, "{\"step\":0}\n{\"step\":1}");
  EXPECT_EQ(kiln::read_metrics_jsonl(file).size(), 2u);
}

TEST_F(LoggingFiles, BadLineIsAnErrorNamingFileAndLine) {
  const fs::path file = dir_ / "metrics.jsonl";
  write_bytes(file, "{\"step\":0}\n{\"step\":1,\"lo\n{\"step\":2}\n");
  auto error = error_of([&] { kiln::read_metrics_jsonl(file); });
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find(file.string()), std::string::npos) << *error;
  EXPECT_NE(error->find("line 2"), std::string::npos) << *error;

  // A cut-off last line that still ends in a newline was not a crash mid-write.
  write_bytes(file, "{\"step\":0}\n{\"step\":1,\"lo\n");
  EXPECT_TRUE(error_of([&] { kiln::read_metrics_jsonl(file); }).has_value());

  write_bytes(file, "{\"step\":0}\n[1,2]\n");
  error = error_of([&] { kiln::read_metrics_jsonl(file); });
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find("line 2: not a JSON object"), std::string::npos) << *error;

  EXPECT_TRUE(error_of([&] { kiln::read_metrics_jsonl(dir_ / "missing.jsonl"); }).has_value());
}

TEST_F(LoggingFiles, ResumeAfterCrashRepairsTheUnterminatedLastLine) {
  const fs::path file = dir_ / "metrics.jsonl";
  write_bytes(file, "{\"step\":0}\n{\"step\":1,\"lo");
  { kiln::MetricsLog(dir_, false).log(1, {{"loss", 0.5}}); }
  auto lines = kiln::read_metrics_jsonl(file);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1]["step"], 1);
  EXPECT_EQ(lines[1]["loss"].get<double>(), 0.5);

  // A complete record that only lacks its newline is kept.
  write_bytes(file, "{\"step\":0}\n{\"step\":1}");
  { kiln::MetricsLog(dir_, false).log(2, {{"loss", 0.25}}); }
  lines = kiln::read_metrics_jsonl(file);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2]["step"], 2);
}

}  // namespace
