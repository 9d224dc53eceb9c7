// SHA-256 via OpenSSL's EVP interface, streamed so multi-GB checkpoints never sit in memory.
#include "util/sha256.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "util/error.h"

namespace kiln {
namespace {

constexpr size_t kReadBuffer = 1 << 20;
// A1111 `modules/sd_models.py::model_hash`: seek(0x100000), read(0x10000).
constexpr long kLegacyOffset = 0x100000;
constexpr size_t kLegacyLength = 0x10000;

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), &EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1)
      throw Error("sha256: OpenSSL could not initialise a SHA-256 context");
  }
  void update(const void* data, size_t size) {
    if (size > 0 && EVP_DigestUpdate(ctx_.get(), data, size) != 1)
      throw Error("sha256: OpenSSL update failed");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), digest, &len) != 1) throw Error("sha256: OpenSSL final failed");
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(2 * len);
    for (unsigned int i = 0; i < len; ++i) {
      out.push_back(kHex[digest[i] >> 4]);
      out.push_back(kHex[digest[i] & 0xf]);
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
};

using FilePtr = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

FilePtr open_for_reading(const std::filesystem::path& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw_file_error(path, std::string("cannot open for hashing: ") + std::strerror(errno));
  return f;
}

}  // namespace

std::string sha256_bytes(std::string_view bytes) {
  Sha256 h;
  h.update(bytes.data(), bytes.size());
  return h.hex();
}

std::string sha256_file(const std::filesystem::path& path) {
  FilePtr f = open_for_reading(path);
  std::vector<unsigned char> buffer(kReadBuffer);
  Sha256 h;
  while (true) {
    size_t got = std::fread(buffer.data(), 1, buffer.size(), f.get());
    h.update(buffer.data(), got);
    if (got < buffer.size()) break;
  }
  if (std::ferror(f.get()))
    throw_file_error(path, std::string("read error while hashing: ") + std::strerror(errno));
  return h.hex();
}

std::string a1111_legacy_hash(const std::filesystem::path& path) {
  FilePtr f = open_for_reading(path);
  std::vector<unsigned char> buffer(kLegacyLength);
  // Like Python's file.read past EOF, a short file simply yields fewer (possibly zero) bytes.
  size_t got = 0;
  if (std::fseek(f.get(), kLegacyOffset, SEEK_SET) == 0)
    got = std::fread(buffer.data(), 1, buffer.size(), f.get());
  if (std::ferror(f.get()))
    throw_file_error(path, std::string("read error while hashing: ") + std::strerror(errno));
  Sha256 h;
  h.update(buffer.data(), got);
  return h.hex().substr(0, 8);
}

}  // namespace kiln
