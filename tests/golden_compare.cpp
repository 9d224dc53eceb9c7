#include "golden_compare.h"

#include <torch/torch.h>

#include <sstream>

namespace kiln::test {

std::filesystem::path golden_dir() { return KILN_GOLDEN_DIR; }

SafeTensorsFile golden_file(const std::string& name) { return SafeTensorsFile::open(golden_dir() / name); }

std::filesystem::path tiny_model_path() { return golden_dir() / "tiny-sd" / "model.safetensors"; }
std::filesystem::path tiny_config_path() { return golden_dir() / "tiny-sd" / "diffusers-configs"; }

std::string tiny_run_file_head(const std::filesystem::path& data_folder) {
  return "[model]\ncheckpoint = \"" + tiny_model_path().string() + "\"\nconfig = \"" + tiny_config_path().string() +
         "\"\n[data]\nfolders = [{ path = \"" + data_folder.string() +
         "\" }]\nresolution = 64\nmin_bucket = 64\nmax_bucket = 64\n";
}

StableDiffusionModels load_tiny_models() {
  return build_models(read_checkpoint(tiny_model_path(), tiny_config_path()));
}

double max_abs_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  return (actual.to(torch::kDouble) - expected.to(torch::kDouble)).abs().max().item<double>();
}

double max_relative_error(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kDouble), e = expected.to(torch::kDouble);
  return ((a - e).abs() / (e.abs() + 1e-12)).max().item<double>();
}

::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                     Tolerance tol, const std::string& name) {
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << name << ": shape " << actual.sizes() << " != expected " << expected.sizes();
  }
  auto a = actual.detach().to(torch::kCPU).to(torch::kDouble).flatten();
  auto e = expected.detach().to(torch::kCPU).to(torch::kDouble).flatten();
  if (a.numel() == 0) return ::testing::AssertionSuccess();
  auto diff = (a - e).abs();
  auto allowed = tol.atol + tol.rtol * e.abs();
  auto bad = (diff > allowed) | (a.isnan() != e.isnan());
  const int64_t n_bad = bad.sum().item<int64_t>();
  if (n_bad == 0) return ::testing::AssertionSuccess();
  const int64_t worst = (diff - allowed).argmax().item<int64_t>();
  std::ostringstream msg;
  msg << name << ": " << n_bad << " of " << a.numel() << " elements outside atol " << tol.atol << " rtol "
      << tol.rtol << "; max abs err " << diff.max().item<double>() << ", max rel err "
      << max_relative_error(a, e) << "; worst at flat index " << worst << ": got " << a[worst].item<double>()
      << " want " << e[worst].item<double>() << "; first pairs:";
  auto idx = bad.nonzero().flatten();
  for (int64_t i = 0; i < std::min<int64_t>(5, idx.numel()); ++i) {
    const int64_t k = idx[i].item<int64_t>();
    msg << " [" << k << "] " << a[k].item<double>() << " vs " << e[k].item<double>();
  }
  return ::testing::AssertionFailure() << msg.str();
}

}  // namespace kiln::test
