// kiln::Error: the one exception type the library throws for bad input (files, settings).
// Its message names the file and the problem; only main() catches it and prints it.
#pragma once
#include <filesystem>
#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "<path>: <problem>" as one line, the form every file error takes.
[[noreturn]] void throw_file_error(const std::filesystem::path& path, const std::string& problem);

}  // namespace kiln
