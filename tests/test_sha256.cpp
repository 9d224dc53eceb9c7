// SHA-256 of bytes and files, and AUTOMATIC1111's legacy 8-char model hash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "util/error.h"
#include "util/sha256.h"

namespace fs = std::filesystem;

namespace {

// Deterministic, non-periodic-looking content; the expected hashes below were computed from the
// same formula with Python's hashlib and cross-checked with coreutils `sha256sum` when this test was written.
std::string generated(size_t n) {
  std::string s(n, '\0');
  for (uint64_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * i + 7 * i + 3) % 251);
  return s;
}

class Sha256Files : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_sha256_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path write(const std::string& name, const std::string& bytes) {
    fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }
  fs::path dir_;
};

}  // namespace

TEST(Sha256, KnownVectors) {
  // FIPS 180-2 examples.
  EXPECT_EQ(kiln::sha256_bytes("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(kiln::sha256_bytes(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(kiln::sha256_bytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(kiln::sha256_bytes(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_F(Sha256Files, WholeFileAcrossSeveralReadBuffers) {
  // 1 MiB + 64 KiB + 12345 bytes: more than one 1 MiB read, and a partial last one.
  const fs::path p = write("big.bin", generated(0x100000 + 0x10000 + 12345));
  EXPECT_EQ(kiln::sha256_file(p), "c70fac27a3b7ad58d9219e630507144d24b28b1ebb27f918e32c9dd3402efdc8");
  EXPECT_EQ(kiln::sha256_file(p), kiln::sha256_bytes(generated(0x100000 + 0x10000 + 12345)));
  EXPECT_EQ(kiln::sha256_file(write("empty.bin", "")), kiln::sha256_bytes(""));
  EXPECT_EQ(kiln::sha256_file(write("exact.bin", std::string(1 << 20, 'x'))),
            kiln::sha256_bytes(std::string(1 << 20, 'x')));
}

TEST_F(Sha256Files, A1111LegacyHash) {
  // Full 64 KiB window at offset 1 MiB.
  EXPECT_EQ(kiln::a1111_legacy_hash(write("big.bin", generated(0x100000 + 0x10000 + 12345))), "3a4b6388");
  // File ends 100 bytes into the window: Python's read() returns just those 100 bytes.
  EXPECT_EQ(kiln::a1111_legacy_hash(write("mid.bin", generated(0x100000 + 100))), "76457b16");
  // Shorter than 1 MiB: read() past EOF returns b'', so the hash is that of the empty string.
  EXPECT_EQ(kiln::a1111_legacy_hash(write("small.bin", generated(1000))), "e3b0c442");
}

TEST_F(Sha256Files, MissingFileNamesThePath) {
  const fs::path p = dir_ / "missing.ckpt";
  try {
    kiln::sha256_file(p);
    FAIL() << "no error for a missing file";
  } catch (const kiln::Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(p.string() + ": ", 0), 0u) << e.what();
  }
  EXPECT_THROW(kiln::a1111_legacy_hash(p), kiln::Error);
}
