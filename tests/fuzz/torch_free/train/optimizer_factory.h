// Torch-free stand-in for src/train/optimizer_factory.h, first on fuzz_run_config's include path:
// run_config.cpp needs only optimizer_names() (defined in fuzz_run_config_names.cpp).
#pragma once
#include <string>
#include <vector>

namespace kiln {
std::vector<std::string> optimizer_names();
}  // namespace kiln
