// What several test suites share: running the `kiln` binary, and a fresh temporary folder per test.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <optional>
#include <string>

#include "util/error.h"

namespace kiln::test {

struct RunResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

// Runs `kiln ARGS` (the binary this build made) through the shell, as a user's script would.
RunResult run_kiln(const std::string& args);

// A new, empty folder named after the running test and the process.
std::filesystem::path fresh_temp_dir(const std::string& prefix);

std::string read_bytes(const std::filesystem::path& path);
void write_bytes(const std::filesystem::path& path, const std::string& bytes);

// The message of the kiln::Error thrown by `f`, or nullopt when nothing (or something else) is thrown.
template <typename F>
std::optional<std::string> error_of(F&& f) {
  try {
    f();
  } catch (const kiln::Error& e) {
    return std::string(e.what());
  } catch (...) {
    return std::nullopt;
  }
  return std::nullopt;
}

// A fixture with `dir_`: created before each test, removed after it.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = fresh_temp_dir("kiln"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

}  // namespace kiln::test
