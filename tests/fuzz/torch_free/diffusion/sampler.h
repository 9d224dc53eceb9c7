// Torch-free stand-in for src/diffusion/sampler.h, first on fuzz_run_config's include path:
// run_config.cpp needs only sampler_names() (defined in fuzz_run_config_names.cpp).
#pragma once
#include <string>
#include <vector>

namespace kiln {
std::vector<std::string> sampler_names();
}  // namespace kiln
