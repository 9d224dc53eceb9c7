// Golden comparison helpers shared by the tests: reference data loading and |a-b| <= atol + rtol*|ref|.
#pragma once
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>
#include <string>

#include "io/safetensors.h"
#include "models/model_loading.h"

namespace kiln::test {

// Tolerances, one commented table for the whole suite (fp32 CPU, against the Python reference run
// with 1 thread; the golden README measured up to 2.1e-5 drift from thread count alone on VAE decode).
struct Tolerance {
  double atol;
  double rtol;
};
inline constexpr Tolerance kSingleForward{1e-5, 1e-5};  // one network forward pass, fp32
inline constexpr Tolerance kDeepForward{1e-4, 1e-4};    // VAE decode and long chains
inline constexpr Tolerance kExact{0.0, 0.0};            // conversions, merges, tables

std::filesystem::path golden_dir();
// A golden reference file opened as safetensors, e.g. golden_file("unet.safetensors").
SafeTensorsFile golden_file(const std::string& name);

// The golden tiny model, loaded the way users load models: the LDM single file through kiln's
// converter, with the diffusers configs beside it (head counts cannot be read from shapes).
std::filesystem::path tiny_model_path();
std::filesystem::path tiny_config_path();
// The start of a run file on the tiny model: [model], and [data] with one folder of pictures in
// 64x64 buckets; callers append the rest of [data] and the other sections.
std::string tiny_run_file_head(const std::filesystem::path& data_folder);
StableDiffusionModels load_tiny_models();

// Gtest assertion: shapes equal and |actual-expected| <= atol + rtol*|expected| elementwise.
// On failure the message names the tensor, the worst element, max abs and max rel error and a few pairs.
::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                     Tolerance tol, const std::string& name);

// Largest |a-b| / (|b| + tiny) over elements, for reporting the tolerance actually reached.
double max_relative_error(const torch::Tensor& actual, const torch::Tensor& expected);
double max_abs_error(const torch::Tensor& actual, const torch::Tensor& expected);

}  // namespace kiln::test
