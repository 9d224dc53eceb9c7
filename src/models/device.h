// Where kiln's networks run: `--device cpu | cuda | cuda:N`. Noise is always drawn on the CPU from
// seeded generators and then moved, so a seed gives the same picture and the same training run on
// every device (up to the device's rounding).
#pragma once
#include <torch/types.h>

#include <string>

namespace torch::nn {
class Module;
}

namespace kiln {

// "cpu", "cuda" (the first GPU) or "cuda:N". A CUDA device this libtorch cannot reach (a CPU-only
// build, no GPU visible, N too large) is a kiln::Error that says which.
torch::Device parse_device(const std::string& name);
std::string device_name(const torch::Device& device);

// The device of a module's first parameter or buffer (CPU for a module that has neither).
torch::Device module_device(const torch::nn::Module& module);
// The dtype of a module's first parameter (fp32 for a module without parameters): a VAE kept at
// half precision takes its input at that precision.
torch::ScalarType module_dtype(const torch::nn::Module& module);

}  // namespace kiln
