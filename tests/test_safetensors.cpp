// safetensors reader/writer: the spec's byte-exact vector, round trips of every dtype, the golden
// files, zero-copy views, one rejection per malformed-header rule, and atomic writes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "io/safetensors.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;
using kiln::SafeTensorsFile;

namespace {

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("kiln_st_") + std::to_string(::getpid()) + "_" + info->test_suite_name() +
                       "_" + info->name();
    for (char& c : name)
      if (c == '/') c = '_';
    path_ = fs::temp_directory_path() / name;
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_all(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string u64le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// 8-byte length + header + `data_bytes` zero bytes.
std::string file_bytes(const std::string& header, uint64_t data_bytes) {
  return u64le(header.size()) + header + std::string(data_bytes, '\0');
}

std::string to_hex(const std::string& s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xf]);
  }
  return out;
}

std::string error_of(const fs::path& p) {
  try {
    SafeTensorsFile::open(p);
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(SafeTensors, SpecTestVectorIsReproducedByteExactly) {
  TempDir dir;
  const fs::path p = dir / "a.safetensors";
  kiln::SafeTensorsWriteOptions opts;
  opts.metadata = {{"format", "pt"}};
  kiln::save_safetensors(p, {{"a", torch::tensor({1.0f, 2.0f})}}, opts);
  const std::string expected =
      "5800000000000000" +
      to_hex(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}   )") +
      "0000803f00000040";
  EXPECT_EQ(to_hex(read_all(p)), expected);
  EXPECT_EQ(fs::file_size(p), 104u);

  auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.header().header_length, 88u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_TRUE(torch::equal(f.tensor("a"), torch::tensor({1.0f, 2.0f})));
}

TEST(SafeTensors, RoundTripsEveryDtypeIncludingScalarsAndEmptyTensors) {
  TempDir dir;
  torch::manual_seed(0);
  kiln::StateDict in;
  in["f64"] = torch::randn({3, 5}, torch::kFloat64);
  in["f32"] = torch::randn({2, 3, 4});
  in["f16"] = torch::randn({7}).to(torch::kFloat16);
  in["bf16"] = torch::randn({3, 3}).to(torch::kBFloat16);
  in["i64"] = torch::randint(-1000000, 1000000, {5}, torch::kInt64);
  in["i32"] = torch::randint(-100000, 100000, {2, 2}, torch::kInt32);
  in["i16"] = torch::randint(-30000, 30000, {3}, torch::kInt16);
  in["i8"] = torch::randint(-128, 127, {9}, torch::kInt8);
  in["u8"] = torch::randint(0, 255, {4, 1}, torch::kUInt8);
  in["bool"] = torch::randint(0, 2, {5}).to(torch::kBool);
  in["scalar_f32"] = torch::tensor(3.5f);  // shape [], one element
  in["scalar_i64"] = torch::tensor(int64_t{-7});
  in["empty_f32"] = torch::empty({0, 4});  // zero elements, begin == end
  in["empty_u8"] = torch::empty({0}, torch::kUInt8);
  in["strided"] = torch::arange(24, torch::kFloat32).view({4, 6}).t();  // non-contiguous input
  in["expanded"] = torch::tensor({1.5f}).expand({3});                   // stride 0
  in["with_grad"] = torch::randn({2}, torch::requires_grad());
  const fs::path p = dir / "all.safetensors";
  kiln::save_safetensors(p, in, {});

  auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.header().header_length % 8, 0u);
  EXPECT_TRUE(f.metadata().empty());
  ASSERT_EQ(f.entries().size(), in.size());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    torch::Tensor r = f.tensor(name);
    EXPECT_EQ(r.scalar_type(), t.scalar_type());
    EXPECT_EQ(r.sizes(), t.sizes());
    EXPECT_TRUE(torch::equal(r, t));
    // The writer's order (8-byte types first) keeps every tensor naturally aligned in the file.
    if (r.numel() > 0) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data_ptr()) % r.element_size(), 0u);
    }
  }
  const auto* strided = f.find("strided");
  ASSERT_NE(strided, nullptr);
  EXPECT_EQ(strided->shape, (std::vector<int64_t>{6, 4}));
  EXPECT_EQ(f.find("missing"), nullptr);
  EXPECT_EQ(f.tensors().size(), in.size());
}

TEST(SafeTensors, NamesAndMetadataNeedingJSONEscapesRoundTrip) {
  TempDir dir;
  const fs::path p = dir / "names.safetensors";
  kiln::SafeTensorsWriteOptions opts;
  // kohya stores nested JSON as strings; A1111 decodes values starting with '{'.
  opts.metadata = {
      {"ss_tag_frequency", R"({"img": {"a \"cat\"": 3}})"}, {"\u00fcber", "\u2713 \n tab\t"}, {"empty", ""}};
  const kiln::StateDict in = {
      {"quote\"back\\slash", torch::ones({1})}, {"\u6f22/\u00e4", torch::zeros({2})}, {"", torch::ones({3})}};
  kiln::save_safetensors(p, in, opts);
  auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.metadata(), opts.metadata);
  for (const auto& [name, t] : in) EXPECT_TRUE(torch::equal(f.tensor(name), t)) << name;
}

TEST(SafeTensors, WriterOrdersByDtypeSizeThenName) {
  TempDir dir;
  const fs::path p = dir / "order.safetensors";
  kiln::save_safetensors(p, {{"b8", torch::zeros({1}, torch::kUInt8)},
                             {"a16", torch::zeros({1}, torch::kFloat16)},
                             {"z64", torch::zeros({1}, torch::kFloat64)},
                             {"c32", torch::zeros({1}, torch::kFloat32)},
                             {"a64", torch::zeros({1}, torch::kInt64)}});
  auto f = SafeTensorsFile::open(p);
  std::vector<std::pair<uint64_t, std::string>> by_offset;
  for (const auto& e : f.entries()) by_offset.emplace_back(e.begin, e.name);
  std::sort(by_offset.begin(), by_offset.end());
  std::vector<std::string> order;
  for (const auto& [offset, name] : by_offset) order.push_back(name);
  EXPECT_EQ(order, (std::vector<std::string>{"a64", "z64", "c32", "a16", "b8"}));
  // No __metadata__ key when there is no metadata, as the reference writer does.
  EXPECT_EQ(read_all(p).find("__metadata__"), std::string::npos);
}

TEST(SafeTensors, WriterRejectsWhatTheFormatCannotHold) {
  TempDir dir;
  const fs::path p = dir / "bad.safetensors";
  try {
    kiln::save_safetensors(p, {{"c", torch::zeros({2}, torch::kComplexFloat)}});
    FAIL() << "complex tensor was written";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find(p.string() + ": tensor 'c' has dtype"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(kiln::save_safetensors(p, {{"__metadata__", torch::zeros({1})}}), kiln::Error);
  kiln::SafeTensorsWriteOptions opts;
  opts.metadata = {{"k", std::string("\xff\xfe")}};
  EXPECT_THROW(kiln::save_safetensors(p, {{"a", torch::zeros({1})}}, opts), kiln::Error);
  EXPECT_FALSE(fs::exists(p));
  EXPECT_TRUE(dir.entries().empty());
}

TEST(SafeTensors, ReadsGoldenUNetFile) {
  const fs::path p = fs::path(KILN_GOLDEN_DIR) / "unet.safetensors";
  auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.file_size(), 372872u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.entries().size(), 16u);

  torch::Tensor timestep = f.tensor("timestep");
  EXPECT_EQ(timestep.scalar_type(), torch::kInt64);
  EXPECT_EQ(timestep.sizes(), (std::vector<int64_t>{2}));
  EXPECT_EQ(timestep[0].item<int64_t>(), 10);
  EXPECT_EQ(timestep[1].item<int64_t>(), 999);

  torch::Tensor ehs = f.tensor("encoder_hidden_states");
  EXPECT_EQ(ehs.scalar_type(), torch::kFloat32);
  EXPECT_EQ(ehs.sizes(), (std::vector<int64_t>{2, 77, 32}));
  torch::Tensor sample = f.tensor("sample");
  EXPECT_EQ(sample.sizes(), (std::vector<int64_t>{2, 4, 16, 16}));
  // Values read independently with Python's struct module from the same bytes.
  EXPECT_FLOAT_EQ(sample.flatten()[0].item<float>(), -1.5255959033966064f);
  EXPECT_FLOAT_EQ(sample.flatten()[2].item<float>(), -0.6539809107780457f);
  torch::Tensor out = f.tensor("out");
  EXPECT_FLOAT_EQ(out.flatten()[1].item<float>(), 0.37440869212150574f);
  EXPECT_FLOAT_EQ(out.flatten()[-1].item<float>(), -0.21776321530342102f);
  EXPECT_EQ(f.tensor("intermediate.time_embedding").sizes(), (std::vector<int64_t>{2, 128}));
}

TEST(SafeTensors, AcceptsEveryGoldenFile) {
  int opened = 0;
  for (const auto& e : fs::recursive_directory_iterator(KILN_GOLDEN_DIR)) {
    if (e.path().extension() != ".safetensors") continue;
    SCOPED_TRACE(e.path().string());
    auto f = SafeTensorsFile::open(e.path());
    for (const auto& entry : f.entries()) {
      torch::Tensor t = f.tensor(entry.name);
      EXPECT_EQ(static_cast<uint64_t>(t.numel()), entry.numel());
    }
    ++opened;
  }
  EXPECT_GE(opened, 5);
}

TEST(SafeTensors, TensorsAreZeroCopyViewsThatKeepTheMappingAlive) {
  torch::Tensor kept;
  {
    auto f = SafeTensorsFile::open(fs::path(KILN_GOLDEN_DIR) / "unet.safetensors");
    const std::string_view bytes = f.bytes();
    const auto* begin = reinterpret_cast<const char*>(bytes.data());
    const auto* entry = f.find("sample");
    ASSERT_NE(entry, nullptr);
    kept = f.tensor("sample");
    const auto* ptr = static_cast<const char*>(kept.data_ptr());
    EXPECT_EQ(ptr, begin + 8 + f.header().header_length + entry->begin);
    EXPECT_EQ(f.tensor("sample").data_ptr(), kept.data_ptr());  // the same bytes, not a new copy
  }
  // The SafeTensorsFile is gone; the view still reads the mapped bytes.
  EXPECT_FLOAT_EQ(kept.flatten()[0].item<float>(), -1.5255959033966064f);
}

TEST(SafeTensors, MisalignedDataIsCopiedNotViewed) {
  TempDir dir;
  // 8 + 85 = 93: the data section starts at an odd address, so an F32 view would be misaligned.
  std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append(85 - header.size(), ' ');
  const float values[2] = {1.25f, -3.5f};
  std::string data(reinterpret_cast<const char*>(values), 8);
  const fs::path p = dir / "odd.safetensors";
  write_all(p, u64le(header.size()) + header + data);
  auto f = SafeTensorsFile::open(p);
  torch::Tensor t = f.tensor("x");
  EXPECT_TRUE(torch::equal(t, torch::tensor({1.25f, -3.5f})));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 4, 0u);
  const char* base = f.bytes().data();
  const char* ptr = static_cast<const char*>(t.data_ptr());
  EXPECT_FALSE(ptr >= base && ptr < base + f.file_size());
}

TEST(SafeTensors, DtypesThisTorchLacksGiveAClearError) {
  TempDir dir;
  const fs::path p = dir / "u16.safetensors";
  write_all(
      p,
      file_bytes(
          R"({"w":{"dtype":"U16","shape":[2],"data_offsets":[0,4]},"e":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[4,8]}})",
          8));
  auto f = SafeTensorsFile::open(p);  // the header itself is valid
  EXPECT_EQ(f.find("w")->dtype, kiln::SafeTensorsDType::U16);
  for (const char* name : {"w", "e"}) {
    try {
      f.tensor(name);
      ADD_FAILURE() << "tensor " << name << " was returned";
    } catch (const kiln::Error& e) {
      EXPECT_NE(std::string(e.what()).find(p.string() + ": tensor '" + name + "' has dtype"),
                std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("not supported by this torch"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(f.tensor("absent"), kiln::Error);
}

// ---- malformed files: each must be rejected with "<path>: <the specific problem>" ----

struct BadFile {
  const char* label;
  std::string bytes;
  const char* expected;  // a substring of the message
};
void PrintTo(const BadFile& b, std::ostream* os) { *os << b.label; }

std::vector<BadFile> bad_files() {
  const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  return {
      {"too_short", "\x05\x00\x00", "too short for the 8-byte header length"},
      {"n_too_big", u64le(100'000'001) + "{}",
       "header length 100000001 exceeds the limit of 100000000 bytes"},
      {"n_past_eof", u64le(1000) + "{}",
       "truncated: header length is 1000 bytes but the file has only 10 bytes"},
      {"empty_header", u64le(0), "header is empty"},
      {"bad_json", file_bytes(R"({"a":{"dtype":"F32",)", 0), "header is not valid JSON"},
      {"not_object", file_bytes("[1,2]", 0), "header is not a JSON object"},
      {"leading_space", file_bytes(" {}", 0), "must start with '{'"},
      {"bad_utf8", file_bytes("{\"\xff\":1}", 0), "header is not valid JSON"},
      {"junk_after_json", file_bytes("{} x", 0), "header is not valid JSON"},
      {"tensor_not_object", file_bytes(R"({"a":5})", 0),
       "tensor 'a' must be an object with dtype, shape and data_offsets"},
      {"unknown_dtype", file_bytes(R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8),
       "tensor 'a': unknown or unsupported dtype 'C64'"},
      {"dtype_not_string", file_bytes(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4),
       "tensor 'a': dtype must be a string"},
      {"missing_offsets", file_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", 4),
       "tensor 'a': missing \"data_offsets\""},
      {"extra_field", file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"foo":1}})", 4),
       "tensor 'a': unexpected field 'foo'"},
      {"duplicate_field",
       file_bytes(R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4),
       "tensor 'a': duplicate field 'dtype'"},
      {"shape_mismatch", file_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       "tensor 'a': data_offsets [0, 8] span 8 bytes but dtype F32 with 3 elements needs 12"},
      {"negative_dim", file_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
       "tensor 'a': shape holds a negative value -1"},
      {"float_dim", file_bytes(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape must hold non-negative integers"},
      {"nested_shape", file_bytes(R"({"a":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape must hold non-negative integers (found an array)"},
      {"huge_dim",
       file_bytes(R"({"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape dimension 9223372036854775808 is too large"},
      {"overflowing_shape",
       file_bytes(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape element count overflows 64 bits"},
      {"overflowing_bytes",
       file_bytes(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape byte size overflows 64 bits"},
      {"three_offsets", file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,16]}})", 8),
       "tensor 'a': data_offsets must be [begin, end] (found 3 values)"},
      {"begin_after_end", file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
       "tensor 'a': data_offsets [8, 0] has begin > end"},
      {"overlap",
       file_bytes(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           12),
       "tensor 'b' data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
      {"hole",
       file_bytes(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
           20),
       "hole in the data section: bytes [8, 12) belong to no tensor"},
      {"hole_at_start", file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "hole in the data section: bytes [0, 4)"},
      {"out_of_range",
       file_bytes(
           R"({"a":{"dtype":"U8","shape":[9223372036854775807],"data_offsets":[0,9223372036854775807]},)"
           R"("b":{"dtype":"U8","shape":[9223372036854775807],"data_offsets":[9223372036854775807,18446744073709551614]}})",
           0),
       "tensor 'b' data_offsets [9223372036854775807, 18446744073709551614] are out of range"},
      {"offset_too_big_for_u64",
       file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})", 8),
       "tensor 'a': data_offsets must hold non-negative integers"},
      {"truncated_data", file_bytes("{" + a + "}", 4),
       "truncated: header says data ends at byte 70 but file has 66 bytes"},
      {"trailing_bytes", file_bytes("{" + a + "}", 12),
       "trailing bytes: header says data ends at byte 70 but file has 74 bytes (4 extra)"},
      {"duplicate_tensor", file_bytes("{" + a + "," + a + "}", 8), "duplicate key 'a' in header"},
      {"metadata_not_string", file_bytes(R"({"__metadata__":{"x":1}})", 0),
       "__metadata__ value for key 'x' must be a string (found a number)"},
      {"metadata_nested", file_bytes(R"({"__metadata__":{"x":{"y":"z"}}})", 0),
       "__metadata__ value for key 'x' must be a string (found an object)"},
      {"metadata_not_object", file_bytes(R"({"__metadata__":"pt"})", 0),
       "__metadata__ must be an object of strings"},
      {"metadata_duplicate", file_bytes(R"({"__metadata__":{"x":"1","x":"2"}})", 0),
       "duplicate key 'x' in __metadata__"},
  };
}

class MalformedFile : public ::testing::TestWithParam<BadFile> {};

TEST_P(MalformedFile, IsRejectedWithAMessageNamingFileAndProblem) {
  TempDir dir;
  const fs::path p = dir / (std::string(GetParam().label) + ".safetensors");
  write_all(p, GetParam().bytes);
  const std::string message = error_of(p);
  EXPECT_EQ(message.rfind(p.string() + ": ", 0), 0u) << message;
  EXPECT_NE(message.find(GetParam().expected), std::string::npos) << message;
  for (unsigned char c : message)
    EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "unprintable byte " << int(c) << " in: " << message;
}

INSTANTIATE_TEST_SUITE_P(SafeTensors, MalformedFile, ::testing::ValuesIn(bad_files()),
                         [](const ::testing::TestParamInfo<BadFile>& info) {
                           return std::string(info.param.label);
                         });

TEST(SafeTensors, EdgeCasesTheFormatAllows) {
  TempDir dir;
  const fs::path p = dir / "ok.safetensors";
  // No tensors at all; an empty tensor sharing its offset with the next one; padding with spaces.
  write_all(p, file_bytes("{}", 0));
  EXPECT_TRUE(SafeTensorsFile::open(p).entries().empty());
  write_all(
      p,
      file_bytes(
          R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}      )",
          1));
  auto f = SafeTensorsFile::open(p);
  EXPECT_EQ(f.tensor("e").sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(f.tensor("a").dim(), 0);
  EXPECT_THROW(SafeTensorsFile::open(dir / "does_not_exist.safetensors"), kiln::Error);
  EXPECT_THROW(SafeTensorsFile::open(dir.path()), kiln::Error);  // a directory
}

// ---- atomic writes ----

TEST(AtomicFile, FailedWriteLeavesTargetIntactAndNoTemporaries) {
  TempDir dir;
  const fs::path p = dir / "model.safetensors";
  write_all(p, "previous contents");
  EXPECT_THROW(kiln::write_file_atomically(p,
                                           [](std::FILE* f) {
                                             std::fputs("half", f);
                                             throw kiln::Error("simulated failure");
                                           }),
               kiln::Error);
  EXPECT_EQ(read_all(p), "previous contents");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"model.safetensors"}));

  // A save that fails part-way (unsupported dtype after a good tensor) also leaves the old file.
  EXPECT_THROW(
      kiln::save_safetensors(p, {{"a", torch::ones({2})}, {"b", torch::ones({2}, torch::kComplexDouble)}}),
      kiln::Error);
  EXPECT_EQ(read_all(p), "previous contents");

  kiln::save_safetensors(p, {{"a", torch::ones({2})}});
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"model.safetensors"}));
  EXPECT_TRUE(torch::equal(SafeTensorsFile::open(p).tensor("a"), torch::ones({2})));
}

TEST(AtomicFile, ReplacesAnOpenMappingSafely) {
  TempDir dir;
  const fs::path p = dir / "m.safetensors";
  kiln::save_safetensors(p, {{"a", torch::full({4}, 1.0f)}});
  auto old = SafeTensorsFile::open(p);
  torch::Tensor view = old.tensor("a");
  kiln::save_safetensors(p, {{"a", torch::full({4}, 2.0f)}});  // rename: the old inode stays mapped
  EXPECT_TRUE(torch::equal(view, torch::full({4}, 1.0f)));
  EXPECT_TRUE(torch::equal(SafeTensorsFile::open(p).tensor("a"), torch::full({4}, 2.0f)));
}

TEST(AtomicFile, TextAndMissingDirectory) {
  TempDir dir;
  kiln::write_text_atomically(dir / "config.json", "{\"a\": 1}\n");
  EXPECT_EQ(read_all(dir / "config.json"), "{\"a\": 1}\n");
  try {
    kiln::write_text_atomically(dir / "no" / "such" / "dir.json", "x");
    FAIL() << "wrote into a missing directory";
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create temporary file"), std::string::npos) << e.what();
  }
}

TEST(AtomicFile, DirectoryIsReplacedWholeOrNotAtAll) {
  TempDir dir;
  const fs::path target = dir / "model";
  kiln::write_directory_atomically(target, [](const fs::path& tmp) {
    fs::create_directories(tmp / "unet");
    write_all(tmp / "unet" / "config.json", "v1");
  });
  EXPECT_EQ(read_all(target / "unet" / "config.json"), "v1");

  // A failing build leaves the previous version untouched and no temporary directory behind.
  EXPECT_THROW(kiln::write_directory_atomically(target,
                                                [](const fs::path& tmp) {
                                                  write_all(tmp / "partial", "x");
                                                  throw kiln::Error("simulated failure");
                                                }),
               kiln::Error);
  EXPECT_EQ(read_all(target / "unet" / "config.json"), "v1");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"model"}));

  // A successful build replaces the old tree completely (stale files do not survive).
  kiln::write_directory_atomically(target,
                                   [](const fs::path& tmp) { write_all(tmp / "model_index.json", "v2"); });
  EXPECT_EQ(read_all(target / "model_index.json"), "v2");
  EXPECT_FALSE(fs::exists(target / "unet"));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"model"}));
}
