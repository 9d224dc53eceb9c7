#include "train/adamw_8bit.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "util/error.h"

namespace kiln {
namespace {

constexpr int64_t kMapSize = 256;

// The CUDA kernel's quantize_2D: a binary search for the bracket map[i-1] < x ≤ map[i], then a
// float32 midpoint test. The search ends on an even index, which wins exact midpoint ties; a NaN
// (x = 0/0 from an all-zero block) fails every comparison and walks down to code 0.
torch::Tensor nearest_codes(const torch::Tensor& x, const torch::Tensor& map) {
  const auto index = torch::searchsorted(map, x);
  const auto lower = (index - 1).clamp_min(0), upper = index.clamp_max(kMapSize - 1);
  const auto midpoint = (torch::take(map, lower) + torch::take(map, upper)) * 0.5;
  auto codes = torch::where(x < midpoint, lower, upper);
  codes = torch::where(x == midpoint, torch::where(lower.bitwise_and(1) == 0, lower, upper), codes);
  return codes.masked_fill_(torch::isnan(x), 0);
}

// torch.linspace(start, end, steps, dtype=float32) as current PyTorch computes it on x86-64: the
// first half start + step·i, the second end − step·(steps − 1 − i), each a fused multiply-add (its
// AVX2/AVX-512 kernel builds contract them; a published dump of bnb's signed map matches this form in
// all 256 entries, the unfused one in 214). libtorch 1.13's own, vectorised linspace and a float64
// derivation both land an ulp or two off on dozens of the map's values.
std::vector<float> linspace_float32(float start, float end, int64_t steps) {
  const float step = (end - start) / static_cast<float>(steps - 1);
  std::vector<float> out(steps);
  for (int64_t i = 0; i < steps; ++i)
    out[i] = i < steps / 2 ? std::fma(step, static_cast<float>(i), start)
                           : std::fma(-step, static_cast<float>(steps - 1 - i), end);
  return out;
}

int64_t block_count(int64_t numel, int64_t block_size) { return (numel + block_size - 1) / block_size; }

// The flattened tensor as [blocks, block_size], its tail filled with `fill`.
torch::Tensor as_blocks(const torch::Tensor& flat, int64_t block_size, double fill) {
  const int64_t blocks = block_count(flat.numel(), block_size);
  return torch::constant_pad_nd(flat, {0, blocks * block_size - flat.numel()}, fill)
      .view({blocks, block_size});
}

torch::Tensor first_elements(const torch::Tensor& blocks, int64_t numel) {
  return blocks.reshape(-1).narrow(0, 0, numel);
}

// The kernels receive every hyper-parameter as float and derive the rest in float arithmetic; doing
// the same here keeps e.g. 1 − β1 at 0.100000024f rather than the float nearest to 0.1.
struct StepConstants {
  float beta1, beta2, one_minus_beta1, one_minus_beta2, eps_correction2, step_size, decay;
  bool decays;
};

StepConstants step_constants(const AdamW8bitOptions& options, double lr, int64_t step) {
  StepConstants c{};
  const float lr_f = static_cast<float>(lr), eps = static_cast<float>(options.eps);
  const float weight_decay = static_cast<float>(options.weight_decay), t = static_cast<float>(step);
  c.beta1 = static_cast<float>(options.beta1);
  c.beta2 = static_cast<float>(options.beta2);
  c.one_minus_beta1 = 1.0f - c.beta1;
  c.one_minus_beta2 = 1.0f - c.beta2;
  const float correction1 = 1.0f - std::pow(c.beta1, t);
  const float correction2 = std::sqrt(1.0f - std::pow(c.beta2, t));
  c.eps_correction2 = eps * correction2;
  c.step_size = -lr_f * correction2 / correction1;
  c.decays = weight_decay > 0.0f;
  c.decay = 1.0f - lr_f * weight_decay;
  return c;
}

// p + step_size·m/(√v + eps·√bc2), stored in the parameter's dtype, then the decoupled decay (also
// stored): the kernels write the parameter back to T after each of the two operations.
torch::Tensor adam_update(const torch::Tensor& param_f32, const torch::Tensor& m, const torch::Tensor& v,
                          const StepConstants& c, torch::ScalarType dtype) {
  auto updated = param_f32 + (m / (v.sqrt() + c.eps_correction2)) * c.step_size;
  if (dtype != torch::kFloat32) updated = updated.to(dtype).to(torch::kFloat32);
  if (c.decays) updated = updated * c.decay;
  return updated;
}

// The fused 8-bit step below reproduces the vectorised expressions above (nearest_codes, adam_update,
// the moment updates) element by element in the same float32 operations and order, so that its codes,
// absmax and parameters equal theirs to the bit. The tensor form, materialising a dozen full-size
// temporaries (int64 codes among them) per parameter, took 15 times as long on the SD 1.5 UNet
// (bench/results/2026-11-29-vm.md).

// A quantisation map as plain arrays: its values and, at i ≥ 1, nearest_codes()'s float32 midpoint
// between codes i − 1 and i.
struct CodeMap {
  std::array<float, kMapSize> value{}, midpoint{};
  std::array<uint8_t, kMapSize> negative{};  // signbit(value), a load cheaper than the float test

  explicit CodeMap(const torch::Tensor& map) {
    const auto values = map.to(torch::kFloat32).contiguous();
    std::copy_n(values.data_ptr<float>(), kMapSize, value.begin());
    midpoint[0] = value[0];
    for (int64_t i = 1; i < kMapSize; ++i) midpoint[i] = (value[i - 1] + value[i]) * 0.5f;
    for (int64_t i = 0; i < kMapSize; ++i) negative[i] = std::signbit(value[i]) ? 1 : 0;
  }

  // nearest_codes() for N values. Counting the values below x among the first 255 (8 halvings, no
  // branches to mispredict) gives searchsorted's index except where x lies above the last value,
  // which gets 255 instead of 256: the bracket 254/255 then yields code 255 as the index 256 does.
  // A NaN compares false throughout and ends on code 0, where nearest_codes puts it explicitly.
  // The N searches run interleaved: one search is a chain of dependent loads, N of them overlap.
  template <int N>
  void codes(const float* x, int* out) const {
    int index[N] = {};
#pragma GCC unroll 8
    for (int half = kMapSize / 2; half > 0; half /= 2)
      for (int k = 0; k < N; ++k)
        // A product, not a conditional: GCC turns the latter back into (unpredictable) jumps.
        index[k] += static_cast<int>(value[index[k] + half - 1] < x[k]) * half;
    for (int k = 0; k < N; ++k) {
      const float mid = midpoint[index[k]];
      // The lower code below the midpoint, and on it when that code is the even one (index odd).
      const int lower = (index[k] != 0) & ((x[k] < mid) | ((x[k] == mid) & (index[k] & 1)));
      out[k] = index[k] - lower;
    }
  }
};

struct FusedStep {
  StepConstants c;
  const CodeMap& map1;
  const CodeMap& map2;
  int64_t numel, block_size;
  const float* grad;
  uint8_t* codes1;
  uint8_t* codes2;
  float* absmax1;
  float* absmax2;
};

// A block's largest |moment| as torch's amax gives it: any NaN makes it the canonical quiet NaN.
struct AbsMax {
  float max = 0.0f;
  bool nan = false;
  void add(float x) {
    max = std::max(max, std::fabs(x));
    nan |= std::isnan(x);
  }
  float value() const { return nan ? std::numeric_limits<float>::quiet_NaN() : max; }
};

// Elements per interleaved code search: enough independent loads to hide their latency.
constexpr int kLanes = 16;

// The codes of N elements' moments m / absmax1 and v / absmax2.
template <int N>
void requantise(const FusedStep& s, const float* m, const float* v, float absmax1, float absmax2,
                uint8_t* codes1, uint8_t* codes2) {
  float x1[N], x2[N];
  int c1[N], c2[N];
  for (int k = 0; k < N; ++k) {
    x1[k] = m[k] / absmax1;
    x2[k] = v[k] / absmax2;
  }
  s.map1.codes<N>(x1, c1);
  s.map2.codes<N>(x2, c2);
  for (int k = 0; k < N; ++k) {
    // The kernel keeps m's sign through quantisation (a small negative m would otherwise round to the
    // 0 code), stepping one code towards it in uint8 arithmetic: an all-zero block's code 0 (−0.993)
    // wraps to 255, harmless since its absmax is 0.
    const bool sign_lost = s.map1.negative[c1[k]] != static_cast<uint8_t>(std::signbit(m[k]));
    const int towards = m[k] <= 0.0f ? -1 : 1;
    codes1[k] = static_cast<uint8_t>((c1[k] + static_cast<int>(sign_lost) * towards) & (kMapSize - 1));
    codes2[k] = static_cast<uint8_t>(c2[k]);
  }
}

// Block b's new moments (its real elements into m and v, with their gradients' finiteness), its new
// absmax and its codes, rewritten in place. A non-finite gradient resets its element's moments.
void step_block_moments(const FusedStep& s, int64_t b, float* m, float* v, int32_t* finite) {
  const auto& c = s.c;
  const int64_t begin = b * s.block_size, size = std::min(s.block_size, s.numel - begin);
  const float* g = s.grad + begin;
  uint8_t* codes1 = s.codes1 + begin;
  uint8_t* codes2 = s.codes2 + begin;
  const float scale1 = s.absmax1[b], scale2 = s.absmax2[b];
  const auto moments = [&](float gi, float m_old, float v_old, float& mi, float& vi) {
    const bool ok = std::isfinite(gi);
    vi = ok ? v_old * scale2 * c.beta2 + gi * c.one_minus_beta2 * gi : 0.0f;
    mi = ok ? m_old * scale1 * c.beta1 + gi * c.one_minus_beta1 : 0.0f;
    return ok;
  };
  for (int64_t i = 0; i < size; ++i) {
    m[i] = s.map1.value[codes1[i]];
    v[i] = s.map2.value[codes2[i]];
  }
  AbsMax max1, max2;
  int64_t i = 0;
#if defined(__SSE2__)
  // The moments' arithmetic four lanes at once (GCC leaves the loop below scalar).
  {
    const __m128 sc1 = _mm_set1_ps(scale1), sc2 = _mm_set1_ps(scale2), beta1 = _mm_set1_ps(c.beta1),
                 beta2 = _mm_set1_ps(c.beta2), rest1 = _mm_set1_ps(c.one_minus_beta1),
                 rest2 = _mm_set1_ps(c.one_minus_beta2),
                 largest = _mm_set1_ps(std::numeric_limits<float>::max()),
                 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    __m128 max1v = _mm_setzero_ps(), max2v = _mm_setzero_ps(), nan = _mm_setzero_ps();
    for (; i + 4 <= size; i += 4) {
      const __m128 gi = _mm_loadu_ps(g + i);
      const __m128 ok = _mm_cmple_ps(_mm_and_ps(gi, magnitude), largest);  // false for NaN and ±∞
      const __m128 mi = _mm_and_ps(
          ok, _mm_add_ps(_mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(m + i), sc1), beta1), _mm_mul_ps(gi, rest1)));
      const __m128 vi = _mm_and_ps(ok, _mm_add_ps(_mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(v + i), sc2), beta2),
                                                  _mm_mul_ps(_mm_mul_ps(gi, rest2), gi)));
      _mm_storeu_ps(m + i, mi);
      _mm_storeu_ps(v + i, vi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(finite + i), _mm_castps_si128(ok));
      const __m128 abs1 = _mm_and_ps(mi, magnitude), abs2 = _mm_and_ps(vi, magnitude);
      max1v = _mm_max_ps(max1v, abs1);
      max2v = _mm_max_ps(max2v, abs2);
      nan = _mm_or_ps(nan, _mm_or_ps(_mm_cmpunord_ps(abs1, abs1), _mm_cmpunord_ps(abs2, abs2)));
    }
    alignas(16) float lanes1[4], lanes2[4];
    _mm_store_ps(lanes1, max1v);
    _mm_store_ps(lanes2, max2v);
    for (int k = 0; k < 4; ++k) {
      max1.add(lanes1[k]);
      max2.add(lanes2[k]);
    }
    if (_mm_movemask_ps(nan) != 0)  // rare: tell which moment had the NaN
      for (int64_t j = 0; j < i; ++j) {
        max1.nan |= std::isnan(m[j]);
        max2.nan |= std::isnan(v[j]);
      }
  }
#endif
  for (; i < size; ++i) {
    finite[i] = moments(g[i], m[i], v[i], m[i], v[i]) ? -1 : 0;
    max1.add(m[i]);
    max2.add(v[i]);
  }
  // Past the end of the last block the kernel loads g = 0 and codes 128 / 0 (its out-of-range
  // defaults); those lanes, all alike, take part in the block's absmax like real elements.
  if (size < s.block_size) {
    float pad_m = 0.0f, pad_v = 0.0f;
    moments(0.0f, s.map1.value[128], s.map2.value[0], pad_m, pad_v);
    max1.add(pad_m);
    max2.add(pad_v);
  }
  const float absmax1 = s.absmax1[b] = max1.value(), absmax2 = s.absmax2[b] = max2.value();
  for (i = 0; i + kLanes <= size; i += kLanes)
    requantise<kLanes>(s, m + i, v + i, absmax1, absmax2, codes1 + i, codes2 + i);
  for (; i < size; ++i) requantise<1>(s, m + i, v + i, absmax1, absmax2, codes1 + i, codes2 + i);
}

// adam_update's expression before the decay.
inline float adam_step(float p, float m, float v, const StepConstants& c) {
  return p + (m / (std::sqrt(v) + c.eps_correction2)) * c.step_size;
}

// adam_update on float32 parameters, in place; a non-finite gradient (finite[i] = 0, else −1: a lane
// mask) leaves its element.
void adam_update_in_place(float* p, const float* m, const float* v, const int32_t* finite, int64_t n,
                          const StepConstants& c) {
  int64_t i = 0;
#if defined(__SSE2__)
  // Four lanes at once, in the same IEEE operations: std::sqrt's errno check keeps GCC from
  // vectorising the loop below, which then took as long as the rest of the step.
  const __m128 eps = _mm_set1_ps(c.eps_correction2), step_size = _mm_set1_ps(c.step_size),
               decay = _mm_set1_ps(c.decay);
  for (; i + 4 <= n; i += 4) {
    const __m128 old = _mm_loadu_ps(p + i);
    const __m128 ratio = _mm_div_ps(_mm_loadu_ps(m + i), _mm_add_ps(_mm_sqrt_ps(_mm_loadu_ps(v + i)), eps));
    __m128 updated = _mm_add_ps(old, _mm_mul_ps(ratio, step_size));
    if (c.decays) updated = _mm_mul_ps(updated, decay);
    const __m128 keep = _mm_castsi128_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(finite + i)));
    _mm_storeu_ps(p + i, _mm_or_ps(_mm_and_ps(keep, updated), _mm_andnot_ps(keep, old)));
  }
#endif
  for (; i < n; ++i) {
    const float updated = adam_step(p[i], m[i], v[i], c);
    if (finite[i]) p[i] = c.decays ? updated * c.decay : updated;
  }
}

// adam_update on a contiguous run of parameters of another dtype: torch converts to and from it, so
// that the roundings are exactly those of the tensor form.
void adam_update_converted(torch::Tensor part, const float* m, const float* v, const int32_t* finite,
                           const StepConstants& c) {
  const int64_t n = part.numel();
  auto p_f32 = part.to(torch::kFloat32).contiguous();
  auto updated = torch::empty({n}, p_f32.options());
  float* p = p_f32.data_ptr<float>();
  float* u = updated.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) u[i] = adam_step(p[i], m[i], v[i], c);
  const auto rounded = updated.to(part.scalar_type()).to(torch::kFloat32).contiguous();
  const float* r = rounded.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i)
    if (finite[i]) p[i] = c.decays ? r[i] * c.decay : r[i];
  part.copy_(p_f32);
}
}  // namespace

torch::Tensor dynamic_quantization_map(bool is_signed) {
  constexpr int kMaxExponentBits = 7, kNonSignBits = 7;
  std::vector<float> data;
  for (int i = 0; i < kMaxExponentBits; ++i) {
    const int64_t items = (int64_t{1} << (i + kNonSignBits - kMaxExponentBits + (is_signed ? 0 : 1))) + 1;
    const auto boundaries = linspace_float32(0.1f, 1.0f, items);
    // bitsandbytes multiplies the float32 means by a Python float, which torch rounds to float first.
    const float scale = static_cast<float>(std::pow(10.0, i - (kMaxExponentBits - 1)));
    for (int64_t j = 0; j + 1 < items; ++j) {
      const float mean = (boundaries[j] + boundaries[j + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  if (static_cast<int64_t>(data.size()) != kMapSize)
    throw Error("dynamic quantisation map has the wrong size");
  std::sort(data.begin(), data.end());
  return torch::tensor(data, torch::kFloat32);
}

BlockQuantized quantize_blockwise(const torch::Tensor& x, const torch::Tensor& map, int64_t block_size) {
  if (block_size <= 0) throw Error("quantize_blockwise: block size must be positive");
  if (map.numel() != kMapSize) throw Error("quantize_blockwise: the map must hold 256 values");
  torch::NoGradGuard no_grad;
  const auto code_map = map.to(torch::kFloat32).contiguous();
  const auto flat = x.detach().reshape(-1).to(torch::kFloat32);
  // Zero padding leaves every block's absmax as it is.
  const auto blocks = as_blocks(flat, block_size, 0.0);
  auto absmax = blocks.abs().amax(1);
  const auto codes = nearest_codes(blocks / absmax.unsqueeze(1), code_map);
  return {first_elements(codes, flat.numel()).to(torch::kUInt8).view(x.sizes()), std::move(absmax),
          x.sizes().vec()};
}

torch::Tensor dequantize_blockwise(const BlockQuantized& q, const torch::Tensor& map, int64_t block_size) {
  if (block_size <= 0) throw Error("dequantize_blockwise: block size must be positive");
  if (map.numel() != kMapSize) throw Error("dequantize_blockwise: the map must hold 256 values");
  int64_t numel = 1;
  for (const int64_t d : q.shape) numel *= d;
  if (q.codes.numel() != numel || q.absmax.numel() != block_count(numel, block_size))
    throw Error("dequantize_blockwise: codes or absmax do not fit the shape and block size");
  torch::NoGradGuard no_grad;
  const auto values = torch::take(map.to(torch::kFloat32), q.codes.reshape(-1).to(torch::kLong));
  const auto scale = q.absmax.to(torch::kFloat32).repeat_interleave(block_size).narrow(0, 0, numel);
  return (values * scale).view(q.shape);
}

AdamW8bit::AdamW8bit(std::vector<NamedParameter> parameters, const AdamW8bitOptions& options)
    : Optimizer(std::move(parameters)),
      options_(options),
      map1_(dynamic_quantization_map(true)),
      map2_(dynamic_quantization_map(false)) {
  lr_ = options.lr;
  // bitsandbytes' own argument checks.
  if (options.lr < 0) throw Error("AdamW8bit: learning rate must be ≥ 0");
  if (options.eps < 0) throw Error("AdamW8bit: eps must be ≥ 0");
  if (options.beta1 < 0 || options.beta1 >= 1 || options.beta2 < 0 || options.beta2 >= 1)
    throw Error("AdamW8bit: betas must lie in [0, 1)");
  if (options.weight_decay < 0) throw Error("AdamW8bit: weight decay must be ≥ 0");
  if (options.block_size <= 0) throw Error("AdamW8bit: block size must be positive");
}

void AdamW8bit::step() {
  torch::NoGradGuard no_grad;
  for (auto& p : parameters_) {
    const auto& grad = p.tensor.grad();
    if (!grad.defined()) continue;
    auto& slot = slots_[p.name];
    if (!slot.state1.defined()) {
      slot.quantized = p.tensor.numel() >= options_.min_8bit_size;
      const auto options = p.tensor.options().dtype(slot.quantized ? torch::kUInt8 : torch::kFloat32);
      slot.state1 = torch::zeros(p.tensor.sizes(), options);
      slot.state2 = torch::zeros(p.tensor.sizes(), options);
      if (slot.quantized) {
        const int64_t blocks = block_count(p.tensor.numel(), options_.block_size);
        slot.absmax1 = torch::zeros({blocks}, p.tensor.options().dtype(torch::kFloat32));
        slot.absmax2 = torch::zeros({blocks}, p.tensor.options().dtype(torch::kFloat32));
      }
    }
    slot.step += 1;
    if (slot.quantized)
      step_quantized(p.tensor, grad, slot);
    else
      step_32bit(p.tensor, grad, slot);
  }
}

void AdamW8bit::step_quantized(torch::Tensor& param, const torch::Tensor& grad, Slot& slot) const {
  if (!param.device().is_cpu()) throw Error("AdamW8bit: the 8-bit step runs on CPU tensors only");
  const int64_t numel = param.numel(), block_size = options_.block_size;
  const int64_t blocks = block_count(numel, block_size);
  // kiln's own gradients and state already have these forms; anything else is converted once.
  const auto g = grad.scalar_type() == torch::kFloat32 && grad.is_contiguous()
                     ? grad
                     : grad.reshape(-1).to(torch::kFloat32).contiguous();
  for (auto* state : {&slot.state1, &slot.state2}) *state = state->contiguous();
  for (auto* absmax : {&slot.absmax1, &slot.absmax2}) *absmax = absmax->to(torch::kFloat32).contiguous();
  // The kernel indexes raw memory: a mismatch must be an error, not a read past the end.
  if (g.numel() != numel || slot.state1.numel() != numel || slot.state2.numel() != numel ||
      slot.absmax1.numel() != blocks || slot.absmax2.numel() != blocks)
    throw Error("AdamW8bit: gradient or state does not fit the parameter");
  auto flat = param.contiguous().view({-1});
  const bool in_place = flat.scalar_type() == torch::kFloat32;
  const CodeMap map1(map1_), map2(map2_);
  const FusedStep s{step_constants(options_, lr_, slot.step),
                    map1,
                    map2,
                    numel,
                    block_size,
                    g.data_ptr<float>(),
                    slot.state1.data_ptr<uint8_t>(),
                    slot.state2.data_ptr<uint8_t>(),
                    slot.absmax1.data_ptr<float>(),
                    slot.absmax2.data_ptr<float>()};
  float* p = in_place ? flat.data_ptr<float>() : nullptr;
  // Blocks go to the threads in batches of ~8 k elements, whose moments stay in cache for the update.
  const int64_t batch = std::max<int64_t>(1, 8192 / block_size);
  at::parallel_for(0, blocks, batch, [&](int64_t first, int64_t last) {
    std::vector<float> m(batch * block_size), v(batch * block_size);
    std::vector<int32_t> finite(batch * block_size);
    for (int64_t b0 = first; b0 < last; b0 += batch) {
      const int64_t b1 = std::min(last, b0 + batch);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t offset = (b - b0) * block_size;
        step_block_moments(s, b, m.data() + offset, v.data() + offset, finite.data() + offset);
      }
      const int64_t begin = b0 * block_size, n = std::min(numel, b1 * block_size) - begin;
      if (in_place)
        adam_update_in_place(p + begin, m.data(), v.data(), finite.data(), n, s.c);
      else
        adam_update_converted(flat.narrow(0, begin, n), m.data(), v.data(), finite.data(), s.c);
    }
  });
  if (!param.is_contiguous()) param.copy_(flat.view(param.sizes()));
}

void AdamW8bit::step_32bit(torch::Tensor& param, const torch::Tensor& grad, Slot& slot) const {
  const auto c = step_constants(options_, lr_, slot.step);
  const auto g = grad.to(torch::kFloat32);
  // kOptimizer32bit2State's expressions: (1 − β2)·(g·g) here, where the 8-bit kernel has ((1 − β2)·g)·g.
  slot.state1.mul_(c.beta1).add_(g * c.one_minus_beta1);
  slot.state2.mul_(c.beta2).add_((g * g).mul_(c.one_minus_beta2));
  param.copy_(adam_update(param.to(torch::kFloat32), slot.state1, slot.state2, c, param.scalar_type()));
}

StateDict AdamW8bit::state() const {
  StateDict out;
  for (const auto& [name, slot] : slots_) {
    out[name + ".state1"] = slot.state1;
    out[name + ".state2"] = slot.state2;
    if (slot.quantized) {
      out[name + ".absmax1"] = slot.absmax1;
      out[name + ".absmax2"] = slot.absmax2;
    }
    out[name + ".step"] = torch::tensor(slot.step, torch::kInt64);
  }
  return out;
}

void AdamW8bit::load_state(const StateDict& state) {
  std::map<std::string, Slot> slots;
  for (const auto& p : parameters_) {
    const auto s1 = state.find(p.name + ".state1");
    if (s1 == state.end()) continue;  // never updated before the save
    const auto s2 = state.find(p.name + ".state2"), step = state.find(p.name + ".step");
    if (s2 == state.end() || step == state.end())
      throw Error("AdamW8bit state of " + p.name + " is incomplete");
    if (s1->second.sizes() != p.tensor.sizes() || s2->second.sizes() != p.tensor.sizes())
      throw Error("AdamW8bit state of " + p.name + " does not fit the parameter's shape");
    Slot slot;
    slot.quantized = p.tensor.numel() >= options_.min_8bit_size;
    slot.step = step->second.item<int64_t>();
    const auto device = p.tensor.device();
    if (slot.quantized) {
      if (s1->second.scalar_type() != torch::kUInt8 || s2->second.scalar_type() != torch::kUInt8)
        throw Error("AdamW8bit state of " + p.name + " is not 8-bit although the parameter has " +
                    std::to_string(p.tensor.numel()) + " elements (min_8bit_size " +
                    std::to_string(options_.min_8bit_size) + ")");
      const auto a1 = state.find(p.name + ".absmax1"), a2 = state.find(p.name + ".absmax2");
      if (a1 == state.end() || a2 == state.end())
        throw Error("AdamW8bit state of " + p.name + " lacks absmax");
      const int64_t blocks = block_count(p.tensor.numel(), options_.block_size);
      for (const auto& absmax : {a1->second, a2->second})
        if (absmax.dim() != 1 || absmax.size(0) != blocks)
          throw Error("AdamW8bit state of " + p.name + " has " + std::to_string(absmax.numel()) +
                      " absmax blocks where block size " + std::to_string(options_.block_size) + " gives " +
                      std::to_string(blocks) + " (bitsandbytes < 0.44 used blocks of 2048)");
      slot.state1 = s1->second.to(device).clone();
      slot.state2 = s2->second.to(device).clone();
      slot.absmax1 = a1->second.to(device, torch::kFloat32).clone();
      slot.absmax2 = a2->second.to(device, torch::kFloat32).clone();
    } else {
      if (!s1->second.is_floating_point() || !s2->second.is_floating_point())
        throw Error("AdamW8bit state of " + p.name +
                    " is 8-bit although the parameter is below min_8bit_size");
      slot.state1 = s1->second.to(device, torch::kFloat32).clone();
      slot.state2 = s2->second.to(device, torch::kFloat32).clone();
    }
    slots[p.name] = std::move(slot);
  }
  size_t expected = 0;
  for (const auto& [name, tensor] : state) expected += name.ends_with(".state1") ? 1 : 0;
  if (expected != slots.size()) throw Error("AdamW8bit state holds parameters this optimizer does not train");
  slots_ = std::move(slots);
}

int64_t AdamW8bit::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& [name, slot] : slots_)
    for (const auto* t : {&slot.state1, &slot.state2, &slot.absmax1, &slot.absmax2})
      if (t->defined()) bytes += static_cast<int64_t>(t->nbytes());
  return bytes;
}

}  // namespace kiln
