#include "models/autocast.h"

#include <ATen/autocast_mode.h>
#include <torch/library.h>
#include <torch/version.h>

#include "util/error.h"

namespace kiln {

namespace {

// libtorch >= 2.4 addresses autocast by device type and deprecates the per-device functions that
// 1.13 has; these four wrappers are the only place that difference shows.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool autocast_enabled(torch::DeviceType device) { return at::autocast::is_autocast_enabled(device); }
void set_autocast_enabled(torch::DeviceType device, bool enabled) {
  at::autocast::set_autocast_enabled(device, enabled);
}
torch::ScalarType autocast_dtype(torch::DeviceType device) {
  return at::autocast::get_autocast_dtype(device);
}
void set_autocast_dtype(torch::DeviceType device, torch::ScalarType dtype) {
  at::autocast::set_autocast_dtype(device, dtype);
}
#else
bool autocast_enabled(torch::DeviceType device) {
  return device == torch::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
}
void set_autocast_enabled(torch::DeviceType device, bool enabled) {
  if (device == torch::kCPU)
    at::autocast::set_cpu_enabled(enabled);
  else
    at::autocast::set_enabled(enabled);
}
torch::ScalarType autocast_dtype(torch::DeviceType device) {
  return device == torch::kCPU ? at::autocast::get_autocast_cpu_dtype()
                               : at::autocast::get_autocast_gpu_dtype();
}
void set_autocast_dtype(torch::DeviceType device, torch::ScalarType dtype) {
  if (device == torch::kCPU)
    at::autocast::set_autocast_cpu_dtype(dtype);
  else
    at::autocast::set_autocast_gpu_dtype(dtype);
}
#endif

// The end of one autocast scope, as torch.autocast.__exit__: the cast cache lives until the
// outermost scope closes.
void leave_nesting() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

}  // namespace

#if TORCH_VERSION_MAJOR < 2
namespace {
// libtorch 1.13's CPU group_norm and layer_norm kernels need input and affine parameters of one
// dtype, and its CPU autocast passes both through untouched: a bf16 conv output meeting an fp32
// GroupNorm (every UNet and VAE resnet) or LayerNorm (the UNet transformers after proj_in) throws
// "expected scalar type BFloat16 but found Float". These add the policy CUDA autocast already has
// for both ops (compute them in fp32) at the dispatcher's autocast layer, so the models carry no
// precision code. libtorch 2.x's CPU kernels accept the mixed dtypes themselves.
at::Tensor to_fp32(const at::Tensor& t) {
  return t.defined() && (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf) ? t.to(at::kFloat)
                                                                                           : t;
}
c10::optional<at::Tensor> to_fp32(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(to_fp32(*t)) : t;
}

at::Tensor group_norm_in_fp32(const at::Tensor& input, int64_t num_groups,
                              const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                              double eps, bool cudnn_enabled) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return at::group_norm(to_fp32(input), num_groups, to_fp32(weight), to_fp32(bias), eps, cudnn_enabled);
}

at::Tensor layer_norm_in_fp32(const at::Tensor& input, at::IntArrayRef normalized_shape,
                              const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                              double eps, bool cudnn_enable) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  return at::layer_norm(to_fp32(input), normalized_shape, to_fp32(weight), to_fp32(bias), eps, cudnn_enable);
}
}  // namespace

TORCH_LIBRARY_IMPL(aten, AutocastCPU, m) {
  m.impl("group_norm", TORCH_FN(group_norm_in_fp32));
  m.impl("layer_norm", TORCH_FN(layer_norm_in_fp32));
}
#endif

MixedPrecision parse_mixed_precision(const std::string& name) {
  if (name == "no") return MixedPrecision::No;
  if (name == "bf16") return MixedPrecision::BF16;
  if (name == "fp16") return MixedPrecision::FP16;
  throw Error("mixed_precision: unknown value '" + name + "' (choose no, bf16 or fp16)");
}

std::string mixed_precision_name(MixedPrecision mode) {
  switch (mode) {
    case MixedPrecision::No:
      return "no";
    case MixedPrecision::BF16:
      return "bf16";
    case MixedPrecision::FP16:
      return "fp16";
  }
  return "no";  // unreachable: every enumerator returns above
}

torch::ScalarType compute_dtype(MixedPrecision mode) {
  switch (mode) {
    case MixedPrecision::No:
      return torch::kFloat;
    case MixedPrecision::BF16:
      return torch::kBFloat16;
    case MixedPrecision::FP16:
      return torch::kHalf;
  }
  return torch::kFloat;
}

void check_mixed_precision_supported(torch::DeviceType device, MixedPrecision mode) {
  if (mode == MixedPrecision::No) return;
  if (device != torch::kCPU && device != torch::kCUDA)
    throw Error("mixed_precision " + mixed_precision_name(mode) + " needs a CPU or CUDA device");
  // CPU autocast in 1.13 casts to fp16 but has almost no fp16 CPU kernels: it would fail mid-run.
  if (device == torch::kCPU && mode == MixedPrecision::FP16)
    throw Error("mixed_precision fp16 needs a CUDA device; use bf16 on CPU");
}

AutocastGuard::AutocastGuard(torch::DeviceType device, MixedPrecision mode) : device_(device) {
  if (mode == MixedPrecision::No) return;
  check_mixed_precision_supported(device, mode);
  previous_enabled_ = autocast_enabled(device);
  previous_dtype_ = autocast_dtype(device);
  set_autocast_dtype(device, compute_dtype(mode));
  set_autocast_enabled(device, true);
  at::autocast::increment_nesting();
  active_ = true;
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  leave_nesting();
  set_autocast_enabled(device_, previous_enabled_);
  set_autocast_dtype(device_, previous_dtype_);
}

AutocastState current_autocast_state() {
  AutocastState s;
  s.cpu_enabled = autocast_enabled(torch::kCPU);
  s.cpu_dtype = autocast_dtype(torch::kCPU);
  s.cuda_enabled = autocast_enabled(torch::kCUDA);
  s.cuda_dtype = autocast_dtype(torch::kCUDA);
  s.cache_enabled = at::autocast::is_autocast_cache_enabled();
  return s;
}

namespace {
void apply(const AutocastState& s) {
  set_autocast_enabled(torch::kCPU, s.cpu_enabled);
  set_autocast_dtype(torch::kCPU, s.cpu_dtype);
  set_autocast_enabled(torch::kCUDA, s.cuda_enabled);
  set_autocast_dtype(torch::kCUDA, s.cuda_dtype);
  at::autocast::set_autocast_cache_enabled(s.cache_enabled);
}
}  // namespace

AutocastStateGuard::AutocastStateGuard(const AutocastState& state) : previous_(current_autocast_state()) {
  apply(state);
  at::autocast::increment_nesting();
}

AutocastStateGuard::~AutocastStateGuard() {
  leave_nesting();
  apply(previous_);
}

}  // namespace kiln
