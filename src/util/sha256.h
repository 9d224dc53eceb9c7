// SHA-256 of files, and the model hashes AUTOMATIC1111 shows for checkpoints.
#pragma once
#include <filesystem>
#include <string>

namespace kiln {

// Lower-case hex SHA-256 of the whole file (A1111 "sha256"; its short hash is the first 10 chars).
std::string sha256_file(const std::filesystem::path& path);

// Lower-case hex SHA-256 of a byte string.
std::string sha256_bytes(std::string_view bytes);

// A1111's legacy "model hash": sha256 of the 64 KiB at offset 1 MiB, first 8 hex chars.
std::string a1111_legacy_hash(const std::filesystem::path& path);

}  // namespace kiln
