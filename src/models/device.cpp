#include "models/device.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <fmt/format.h>

#include "util/error.h"

namespace kiln {

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  int64_t index = 0;
  if (name.starts_with("cuda:")) {
    const auto digits = name.substr(5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 4)
      throw Error(fmt::format("--device '{}': expected cpu, cuda or cuda:N", name));
    index = std::stoll(digits);
  } else if (name != "cuda") {
    throw Error(fmt::format("--device '{}': expected cpu, cuda or cuda:N", name));
  }
  if (!torch::cuda::is_available())
    throw Error(fmt::format(
        "--device {}: no CUDA device is usable here ({}); use --device cpu, or build kiln against a CUDA "
        "libtorch (README, \"GPU build\")",
        name,
        torch::hasCUDA() ? "no GPU is visible to this libtorch"
                         : "this kiln's libtorch " TORCH_VERSION " was built without CUDA"));
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  if (index >= count)
    throw Error(fmt::format("--device {}: only {} CUDA device(s) are visible", name, count));
  return {torch::kCUDA, static_cast<torch::DeviceIndex>(index)};
}

torch::ScalarType module_dtype(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) return p.scalar_type();
  return torch::kFloat32;
}

std::string device_name(const torch::Device& device) { return device.str(); }

torch::Device module_device(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) return p.device();
  for (const auto& b : module.buffers()) return b.device();
  return torch::kCPU;
}

}  // namespace kiln
