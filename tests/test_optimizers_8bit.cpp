// bitsandbytes' AdamW8bit and Lion (specs §1, §2.3): the dynamic quantisation maps against float64
// and float32 derivations and the spec's quoted values, blockwise quantisation, one 8-bit step
// against a float64 re-implementation of the CUDA kernel's algorithm, the 32-bit path against
// kiln::AdamW, memory, state round trips, and a short training run against kiln::AdamW.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "train/adamw_8bit.h"
#include "train/lion.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace kiln {
namespace {

constexpr int64_t kBlock = 256;

std::vector<float> to_floats(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kFloat32).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

std::vector<double> to_doubles(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kFloat64).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

std::string sci(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3g", x);
  return buffer;
}

std::vector<int> to_codes(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kInt32).contiguous();
  return {c.data_ptr<int>(), c.data_ptr<int>() + c.numel()};
}

// create_dynamic_map(signed, 7, 8) as specs §1.3 writes it, in float64 throughout.
std::vector<double> reference_map(bool is_signed) {
  std::vector<double> data;
  for (int i = 0; i < 7; ++i) {
    const int items = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
    const double scale = std::pow(10.0, i - 6);
    for (int j = 0; j + 1 < items; ++j) {
      const double lower = 0.1 + 0.9 * j / (items - 1), upper = 0.1 + 0.9 * (j + 1) / (items - 1);
      data.push_back(scale * (lower + upper) / 2);
      if (is_signed) data.push_back(-scale * (lower + upper) / 2);
    }
  }
  data.push_back(0.0);
  data.push_back(1.0);
  std::sort(data.begin(), data.end());
  return data;
}

// The same in the float32 arithmetic bitsandbytes actually runs: torch.linspace's CPU kernel (first
// half start + step·i, second half end − step·(K − 1 − i), contracted to fused multiply-adds in
// x86-64 builds), float midpoints, and the Python scale rounded to float before the product. Its
// signed map equals a published dump of bnb's (run under PyTorch 2 on x86-64) in all 256 entries.
std::vector<float> reference_map_float32(bool is_signed) {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int items = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
    const float start = 0.1f, end = 1.0f, step = (end - start) / static_cast<float>(items - 1);
    std::vector<float> b(items);
    for (int j = 0; j < items; ++j)
      b[j] = j < items / 2 ? std::fma(step, static_cast<float>(j), start)
                           : std::fma(-step, static_cast<float>(items - 1 - j), end);
    const float scale = static_cast<float>(std::pow(10.0, i - 6));
    for (int j = 0; j + 1 < items; ++j) {
      const float mean = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

// Nearest code by exhaustive search; an exact tie goes to the even index (the CUDA search's end
// point), a NaN to code 0.
int reference_code(double x, const std::vector<double>& map) {
  if (std::isnan(x)) return 0;
  int best = 0;
  for (int j = 1; j < static_cast<int>(map.size()); ++j) {
    const double d = std::abs(map[j] - x), best_d = std::abs(map[best] - x);
    if (d < best_d || (d == best_d && j % 2 == 0)) best = j;
  }
  return best;
}

TEST(DynamicMap, MatchesBitsandbytesValues) {
  for (const bool is_signed : {true, false}) {
    const auto map = dynamic_quantization_map(is_signed);
    ASSERT_EQ(map.scalar_type(), torch::kFloat32);
    ASSERT_EQ(map.numel(), 256);
    const auto actual = to_floats(map);
    const auto exact = reference_map_float32(is_signed);
    const auto ideal = reference_map(is_signed);
    int not_bitwise = 0, beyond_two_ulps = 0, float64_differs = 0;
    for (int i = 0; i < 256; ++i) {
      not_bitwise += actual[i] != exact[i] ? 1 : 0;
      // The float64 derivation from the spec differs only by bitsandbytes' float32 rounding.
      const float e = static_cast<float>(ideal[i]);
      const float ulp = std::nextafter(std::abs(e), std::numeric_limits<float>::infinity()) - std::abs(e);
      beyond_two_ulps += std::abs(actual[i] - e) > 2 * ulp ? 1 : 0;
      float64_differs += actual[i] != e ? 1 : 0;
      if (i > 0) {
        EXPECT_LT(actual[i - 1], actual[i]) << "not strictly ascending at " << i;
      }
    }
    EXPECT_EQ(not_bitwise, 0) << (is_signed ? "signed" : "unsigned");
    EXPECT_EQ(beyond_two_ulps, 0) << (is_signed ? "signed" : "unsigned");
    RecordProperty(is_signed ? "signed_entries_off_float64" : "unsigned_entries_off_float64",
                   float64_differs);
  }
  // Appendix A's values: those quoted to 8 significant digits name one float32 and compare exactly,
  // the short ones (5.5e-7) are rounded and compare within 4 ulps.
  const auto s = to_floats(dynamic_quantization_map(true));
  EXPECT_EQ(s[0], -0.99296874f);
  EXPECT_EQ(s[1], -0.97890627f);
  EXPECT_EQ(s[2], -0.96484375f);
  EXPECT_EQ(s[3], -0.95078123f);
  EXPECT_FLOAT_EQ(s[126], -5.5e-7f);
  EXPECT_EQ(s[127], 0.0f);
  EXPECT_FLOAT_EQ(s[128], 5.5e-7f);
  EXPECT_FLOAT_EQ(s[129], 3.25e-6f);
  EXPECT_EQ(s[253], 0.97890627f);
  EXPECT_EQ(s[254], 0.99296874f);
  EXPECT_EQ(s[255], 1.0f);
  EXPECT_EQ(std::count_if(s.begin(), s.end(), [](float v) { return v < 0; }), 127);
  const auto u = to_floats(dynamic_quantization_map(false));
  EXPECT_EQ(u[0], 0.0f);
  EXPECT_FLOAT_EQ(u[1], 3.25e-7f);
  EXPECT_FLOAT_EQ(u[2], 7.75e-7f);
  EXPECT_FLOAT_EQ(u[3], 2.125e-6f);
  EXPECT_EQ(u[253], 0.98945308f);
  EXPECT_EQ(u[254], 0.99648440f);
  EXPECT_EQ(u[255], 1.0f);
}

TEST(Blockwise, RoundTripWithinHalfACodeAndExactAbsmax) {
  torch::manual_seed(7);
  // 4 full blocks and a partial one of 77; block scales over 8 decades; block 2 all zero.
  const int64_t n = 4 * kBlock + 77;
  auto x = torch::randn({n}) * torch::exp(torch::randn({n}) * 2);
  x = x * torch::pow(10.0, torch::floor_divide(torch::arange(n), kBlock).to(torch::kFloat32) * 2 - 4);
  x.narrow(0, 2 * kBlock, kBlock).zero_();
  for (const bool is_signed : {true, false}) {
    const auto input = is_signed ? x : x.abs();
    const auto map = dynamic_quantization_map(is_signed);
    const auto q = quantize_blockwise(input.view({n}), map, kBlock);
    ASSERT_EQ(q.codes.scalar_type(), torch::kUInt8);
    ASSERT_EQ(q.absmax.numel(), 5);
    const auto values = to_floats(input), absmax = to_floats(q.absmax);
    const auto codes = to_codes(q.codes);
    const auto deq = to_floats(dequantize_blockwise(q, map, kBlock));
    const auto m = to_doubles(map);
    double worst_ratio = 0;
    for (int64_t b = 0; b < 5; ++b) {
      float expected_absmax = 0;
      for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
        expected_absmax = std::max(expected_absmax, std::abs(values[i]));
      EXPECT_EQ(absmax[b], expected_absmax) << "block " << b;
    }
    for (int64_t i = 0; i < n; ++i) {
      const double a = absmax[i / kBlock];
      if (a == 0) {
        EXPECT_EQ(deq[i], 0.0f);
        continue;
      }
      const double scaled = static_cast<double>(static_cast<float>(values[i] / static_cast<float>(a)));
      ASSERT_EQ(codes[i], reference_code(scaled, m)) << "element " << i;
      // Half the gap to the neighbouring code on the value's side; past the map's end (signed: below
      // −0.993) the distance to that end.
      const int c = codes[i];
      const int neighbour = scaled > m[c] ? std::min(c + 1, 255) : std::max(c - 1, 0);
      const double half_gap = neighbour == c ? std::abs(scaled - m[c]) : std::abs(m[neighbour] - m[c]) / 2;
      const double error = std::abs(static_cast<double>(deq[i]) - values[i]);
      // Plus the float32 rounding of the input and of the dequantised product.
      const double rounding = 0x1p-23 * (std::abs(values[i]) + std::abs(deq[i]));
      EXPECT_LE(error, half_gap * a + rounding) << "element " << i;
      worst_ratio = std::max(worst_ratio, error / (half_gap * a + 1e-30));
    }
    RecordProperty(is_signed ? "signed_worst_error_over_half_gap" : "unsigned_worst_error_over_half_gap",
                   sci(worst_ratio));
  }
}

TEST(Blockwise, ExactTiesGoToTheEvenCode) {
  const auto map = dynamic_quantization_map(false);
  const auto m = to_floats(map);
  const float tie_253_254 = (m[253] + m[254]) * 0.5f, tie_254_255 = (m[254] + m[255]) * 0.5f;
  const float tie_1_2 = (m[1] + m[2]) * 0.5f;
  const auto q = quantize_blockwise(torch::tensor({1.0f, tie_253_254, tie_254_255, tie_1_2}), map, kBlock);
  EXPECT_EQ(to_codes(q.codes), (std::vector<int>{255, 254, 254, 2}));
}

// ---- AdamW8bit, 8-bit path, against a float64 re-implementation of specs §1.5 ----

struct ReferenceState {
  std::vector<int> codes1, codes2;
  std::vector<double> absmax1, absmax2;
  int64_t step = 0;
};

void reference_step(std::vector<double>& p, const std::vector<double>& g, ReferenceState& s,
                    const AdamW8bitOptions& o, const std::vector<double>& map1,
                    const std::vector<double>& map2) {
  const int64_t n = static_cast<int64_t>(p.size()), blocks = (n + kBlock - 1) / kBlock;
  if (s.codes1.empty()) {
    s.codes1.assign(n, 0);
    s.codes2.assign(n, 0);
    s.absmax1.assign(blocks, 0);
    s.absmax2.assign(blocks, 0);
  }
  // The kernel receives the hyper-parameters as float (1 − β2 is then 0.000999987f, not 0.001) and
  // derives the step's scalars in float: 1 − β2^t cancels to ~1e-5 relative error at t = 2, which
  // shows where v was quantised to 0 and the update is O(1).
  const auto f = [](double x) { return static_cast<double>(static_cast<float>(x)); };
  const double beta1 = f(o.beta1), beta2 = f(o.beta2), lr = f(o.lr), eps = f(o.eps), wd = f(o.weight_decay);
  const float t = static_cast<float>(++s.step);
  const float bc1 = 1.0f - std::pow(static_cast<float>(beta1), t);
  const float bc2s = std::sqrt(1.0f - std::pow(static_cast<float>(beta2), t));
  const double step_size = -lr * bc2s / bc1;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock, end = std::min(n, begin + kBlock);
    std::vector<double> m(end - begin), v(end - begin);
    double max1 = 0, max2 = 0;
    for (int64_t i = begin; i < end; ++i) {
      const bool finite = std::isfinite(g[i]);
      v[i - begin] = finite ? map2[s.codes2[i]] * s.absmax2[b] * beta2 + (1 - beta2) * g[i] * g[i] : 0;
      m[i - begin] = finite ? map1[s.codes1[i]] * s.absmax1[b] * beta1 + (1 - beta1) * g[i] : 0;
      max1 = std::max(max1, std::abs(m[i - begin]));
      max2 = std::max(max2, v[i - begin]);
    }
    s.absmax1[b] = max1;
    s.absmax2[b] = max2;
    for (int64_t i = begin; i < end; ++i) {
      const double mi = m[i - begin], vi = v[i - begin];
      if (std::isfinite(g[i])) {
        p[i] += step_size * mi / (std::sqrt(vi) + eps * bc2s);
        p[i] *= 1 - lr * wd;  // after the Adam step, as the CUDA kernel
      }
      int c1 = reference_code(mi / max1, map1);  // 0/0 in an all-zero block: NaN, code 0
      if (std::signbit(map1[c1]) != std::signbit(mi)) c1 = (c1 + (mi > 0 ? 1 : -1) + 256) % 256;
      s.codes1[i] = c1;
      s.codes2[i] = reference_code(vi / max2, map2);
    }
  }
}

std::vector<NamedParameter> one_parameter(const std::string& name, const torch::Tensor& value) {
  return {{name, value.clone().set_requires_grad(true)}};
}

TEST(AdamW8bit, EightBitStepsMatchAFloat64Reimplementation) {
  torch::manual_seed(11);
  const int64_t rows = 71, cols = 70, n = rows * cols;  // 4970 elements: 19 blocks and one of 106
  AdamW8bitOptions options;
  options.lr = 1e-3;
  auto params = one_parameter("w", torch::randn({rows, cols}));
  AdamW8bit optimizer(params, options);
  auto& w = params[0].tensor;
  std::vector<double> p_ref = to_doubles(w);
  ReferenceState ref;
  const auto map1 = to_doubles(dynamic_quantization_map(true)),
             map2 = to_doubles(dynamic_quantization_map(false));

  for (int step = 1; step <= 3; ++step) {
    // Gradients over several decades, so every region of the maps is used.
    auto g = (torch::randn({rows, cols}) * torch::exp(torch::randn({rows, cols}) * 2)).view({n});
    if (step == 1) {
      g.narrow(0, 3 * kBlock, kBlock).zero_();  // an all-zero block: absmax 0
      g[10] = -1e-9f;  // below half the smallest code: rounds to 0, then the sign fix moves it to −5.5e-7
      g[11] = 1e-9f;
    }
    if (step == 2) g[5] = std::numeric_limits<float>::quiet_NaN();
    if (step == 3) g[6] = std::numeric_limits<float>::infinity();
    const auto before = to_floats(w);
    w.mutable_grad() = g.view({rows, cols}).clone();
    optimizer.step();
    reference_step(p_ref, to_doubles(g), ref, options, map1, map2);

    const auto state = optimizer.state();
    ASSERT_EQ(state.at("w.state1").scalar_type(), torch::kUInt8);
    ASSERT_EQ(state.at("w.state1").sizes(), w.sizes());
    ASSERT_EQ(state.at("w.absmax1").numel(), 20);
    EXPECT_EQ(state.at("w.step").item<int64_t>(), step);
    const auto c1 = to_codes(state.at("w.state1")), c2 = to_codes(state.at("w.state2"));
    int mismatched1 = 0, mismatched2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      mismatched1 += c1[i] != ref.codes1[i] ? 1 : 0;
      mismatched2 += c2[i] != ref.codes2[i] ? 1 : 0;
    }
    EXPECT_EQ(mismatched1, 0) << "state1 codes, step " << step;
    EXPECT_EQ(mismatched2, 0) << "state2 codes, step " << step;
    const auto a1 = to_floats(state.at("w.absmax1")), a2 = to_floats(state.at("w.absmax2"));
    for (size_t b = 0; b < a1.size(); ++b) {
      EXPECT_NEAR(a1[b], ref.absmax1[b], 1e-6 * ref.absmax1[b]) << "absmax1 block " << b;
      EXPECT_NEAR(a2[b], ref.absmax2[b], 1e-6 * ref.absmax2[b]) << "absmax2 block " << b;
    }
    const auto p = to_floats(w);
    double worst = 0;
    for (int64_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(p[i] - p_ref[i]));
    EXPECT_LE(worst, 1e-6) << "step " << step;
    RecordProperty("max_param_error_step_" + std::to_string(step), sci(worst));
    if (step == 1) {
      EXPECT_EQ(a1[3], 0.0f);
      EXPECT_EQ(c1[3 * kBlock], 255);  // code 0 stepped "towards" m = +0 wraps around
      EXPECT_EQ(c2[3 * kBlock], 0);
      EXPECT_EQ(c1[10], 126);
      EXPECT_EQ(c1[11], 127);
    }
    if (step == 2) {
      EXPECT_EQ(p[5], before[5]);  // a NaN gradient leaves the parameter and resets its moments
      EXPECT_EQ(c1[5], 127);
      EXPECT_EQ(c2[5], 0);
    }
    if (step == 3) {
      EXPECT_EQ(p[6], before[6]);
    }
  }
}

// ---- the fused 8-bit step against the vectorised tensor form it replaced ----

// AdamW8bit::step_quantized as it was before the fused kernel (whole-tensor torch operations), kept
// here as the reference the kernel must equal to the bit.
namespace vectorised {

torch::Tensor nearest_codes(const torch::Tensor& x, const torch::Tensor& map) {
  const auto index = torch::searchsorted(map, x);
  const auto lower = (index - 1).clamp_min(0), upper = index.clamp_max(255);
  const auto midpoint = (torch::take(map, lower) + torch::take(map, upper)) * 0.5;
  auto codes = torch::where(x < midpoint, lower, upper);
  codes = torch::where(x == midpoint, torch::where(lower.bitwise_and(1) == 0, lower, upper), codes);
  return codes.masked_fill_(torch::isnan(x), 0);
}

torch::Tensor as_blocks(const torch::Tensor& flat, int64_t block_size, double fill) {
  const int64_t blocks = (flat.numel() + block_size - 1) / block_size;
  return torch::constant_pad_nd(flat, {0, blocks * block_size - flat.numel()}, fill)
      .view({blocks, block_size});
}

torch::Tensor first_elements(const torch::Tensor& blocks, int64_t numel) {
  return blocks.reshape(-1).narrow(0, 0, numel);
}

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

torch::Tensor adam_update(const torch::Tensor& param_f32, const torch::Tensor& m, const torch::Tensor& v,
                          const StepConstants& c, torch::ScalarType dtype) {
  auto updated = param_f32 + (m / (v.sqrt() + c.eps_correction2)) * c.step_size;
  if (dtype != torch::kFloat32) updated = updated.to(dtype).to(torch::kFloat32);
  if (c.decays) updated = updated * c.decay;
  return updated;
}

struct Slot {
  torch::Tensor state1, state2, absmax1, absmax2;
  int64_t step = 0;
};

void step(torch::Tensor& param, const torch::Tensor& grad, Slot& slot, const AdamW8bitOptions& options,
          const torch::Tensor& map1, const torch::Tensor& map2) {
  torch::NoGradGuard no_grad;
  const int64_t numel = param.numel(), block_size = options.block_size;
  if (!slot.state1.defined()) {
    const int64_t blocks = (numel + block_size - 1) / block_size;
    slot.state1 = torch::zeros(param.sizes(), torch::kUInt8);
    slot.state2 = torch::zeros(param.sizes(), torch::kUInt8);
    slot.absmax1 = torch::zeros({blocks});
    slot.absmax2 = torch::zeros({blocks});
  }
  const auto c = step_constants(options, options.lr, ++slot.step);
  const auto g = as_blocks(grad.reshape(-1).to(torch::kFloat32), block_size, 0.0);
  const auto codes1 = as_blocks(slot.state1.reshape(-1), block_size, 128.0).to(torch::kLong);
  const auto codes2 = as_blocks(slot.state2.reshape(-1), block_size, 0.0).to(torch::kLong);
  const auto finite = torch::isfinite(g);
  auto m = torch::take(map1, codes1) * slot.absmax1.unsqueeze(1);
  auto v = torch::take(map2, codes2) * slot.absmax2.unsqueeze(1);
  v = (v * c.beta2).add_((g * c.one_minus_beta2).mul_(g)).masked_fill_(finite.logical_not(), 0.0);
  m = (m * c.beta1).add_(g * c.one_minus_beta1).masked_fill_(finite.logical_not(), 0.0);
  auto absmax1 = m.abs().amax(1), absmax2 = v.abs().amax(1);
  const auto param_f32 = param.reshape(-1).to(torch::kFloat32);
  const auto updated =
      adam_update(param_f32, first_elements(m, numel), first_elements(v, numel), c, param.scalar_type());
  param.copy_(torch::where(first_elements(finite, numel), updated, param_f32).view(param.sizes()));
  auto new_codes1 = nearest_codes(m / absmax1.unsqueeze(1), map1);
  const auto sign_lost = torch::signbit(torch::take(map1, new_codes1)) != torch::signbit(m);
  const auto towards = torch::ones_like(new_codes1).masked_fill_(m <= 0, -1);
  new_codes1 = torch::where(sign_lost, new_codes1 + towards, new_codes1).bitwise_and(255);
  const auto new_codes2 = nearest_codes(v / absmax2.unsqueeze(1), map2);
  slot.state1 = first_elements(new_codes1, numel).to(torch::kUInt8).view(param.sizes());
  slot.state2 = first_elements(new_codes2, numel).to(torch::kUInt8).view(param.sizes());
  slot.absmax1 = std::move(absmax1);
  slot.absmax2 = std::move(absmax2);
}

}  // namespace vectorised

// Same dtype, shape and bytes: NaNs included, and -0 told from +0.
bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const auto ca = a.detach().contiguous(), cb = b.detach().contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

// A gradient whose first-step moment, scaled by its block's absmax, lands exactly on `target` (a
// midpoint between two codes), searched among the floats next to `start`; NaN if none does.
template <typename Scaled>
float tie_gradient(float target, float start, Scaled scaled) {
  float up = start, down = start;
  for (int i = 0; i < 256; ++i) {
    if (scaled(up) == target) return up;
    if (scaled(down) == target) return down;
    up = std::nextafter(up, 2.0f);
    down = std::nextafter(down, -2.0f);
  }
  return std::numeric_limits<float>::quiet_NaN();
}

struct FusedCase {
  std::string name;
  torch::Tensor value;
  AdamW8bitOptions options;
};

TEST(AdamW8bit, FusedStepEqualsTheVectorisedStepBitForBit) {
  torch::manual_seed(17);
  std::vector<FusedCase> cases;
  AdamW8bitOptions defaults;
  defaults.lr = 1e-3;
  cases.push_back({"partial last block", torch::randn({71, 70}), defaults});  // 19 blocks and one of 106
  AdamW8bitOptions no_decay = defaults;
  no_decay.weight_decay = 0;
  cases.push_back({"whole blocks, no decay", torch::randn({64, 64}), no_decay});
  AdamW8bitOptions odd_blocks = defaults;
  odd_blocks.block_size = 102;  // not a multiple of the kernel's 4 or 16 lanes; last block of 1
  cases.push_back({"odd block size", torch::randn({4999}), odd_blocks});
  cases.push_back({"non-contiguous", torch::randn({90, 60}).t(), defaults});
  cases.push_back({"float64", torch::randn({50, 100}, torch::kFloat64), defaults});
  cases.push_back({"float16", torch::randn({5003}).to(torch::kHalf), defaults});
  cases.push_back({"bfloat16", torch::randn({4100}).to(torch::kBFloat16), defaults});
  const auto map1 = dynamic_quantization_map(true), map2 = dynamic_quantization_map(false);

  for (const auto& test : cases) {
    SCOPED_TRACE(test.name);
    auto params = one_parameter("w", test.value);
    ASSERT_EQ(params[0].tensor.is_contiguous(), test.value.is_contiguous());
    AdamW8bit optimizer(params, test.options);
    auto& w = params[0].tensor;
    auto reference = test.value.clone();
    vectorised::Slot slot;
    const int64_t n = w.numel(), block = test.options.block_size;
    for (int step = 1; step <= 3; ++step) {
      auto g = (torch::randn({n}) * torch::exp(torch::randn({n}) * 2)).to(w.scalar_type());
      std::vector<std::pair<int64_t, int>> tie_codes1, tie_codes2;  // element, expected (even) code
      if (step == 1) {
        g.narrow(0, block, block).zero_();  // an all-zero block: absmax 0, codes 255 / 0
        g[3] = -1e-9;
        g[4] = 1e-9;
        if (w.scalar_type() == torch::kFloat32 || w.scalar_type() == torch::kFloat64) {
          // Block 3: absmax from g = 1, then moments exactly on midpoints (m from zero state is
          // (1 − β1)·g, v is ((1 − β2)·g)·g), whose ties go to the even code.
          const int64_t first = 3 * block;
          g.narrow(0, first, block).uniform_(-0.5, 0.5);
          g[first] = 1.0;
          const float rest1 = 1.0f - static_cast<float>(test.options.beta1);
          const float rest2 = 1.0f - static_cast<float>(test.options.beta2);
          const auto values1 = to_floats(map1), values2 = to_floats(map2);
          int64_t next = first + 1;
          for (const int upper : {1, 2, 60, 100, 127, 128, 129, 200, 201, 254, 255}) {
            const float mid = (values1[upper - 1] + values1[upper]) * 0.5f;
            const float tie = tie_gradient(mid, mid, [&](float x) { return (x * rest1) / rest1; });
            if (std::isnan(tie)) continue;
            g[next] = tie;
            tie_codes1.push_back({next++, upper % 2 == 0 ? upper : upper - 1});
          }
          for (const int upper : {1, 2, 3, 50, 101, 200, 255}) {
            const float mid = (values2[upper - 1] + values2[upper]) * 0.5f;
            const float tie =
                tie_gradient(mid, std::sqrt(mid), [&](float x) { return ((x * rest2) * x) / rest2; });
            if (std::isnan(tie)) continue;
            g[next] = tie;
            tie_codes2.push_back({next++, upper % 2 == 0 ? upper : upper - 1});
          }
          EXPECT_GE(tie_codes1.size(), 8u);
          EXPECT_GE(tie_codes2.size(), 4u);
        }
      }
      // A finite gradient whose (1 − β2)·g² overflows: v = ∞, absmax2 = ∞ and v / absmax2 = NaN; on
      // the next step that block's v is 0·∞ = NaN, absmax2 NaN, its parameters NaN.
      const bool overflows = w.scalar_type() != torch::kHalf && w.scalar_type() != torch::kBFloat16;
      if (step == 2) {
        g.narrow(0, 2 * block, block).fill_(std::numeric_limits<double>::quiet_NaN());  // a reset block
        g[5] = std::numeric_limits<double>::quiet_NaN();
        g[n - 1] = -std::numeric_limits<double>::infinity();
        if (overflows) g[9] = 1e30;
      }
      if (step == 3) {
        g[6] = std::numeric_limits<double>::infinity();
        if (overflows) g[4 * block + 7] = -1e30;
      }
      g = g.view(w.sizes());
      w.mutable_grad() = g.clone();
      optimizer.step();
      vectorised::step(reference, g, slot, test.options, map1, map2);
      const auto state = optimizer.state();
      EXPECT_TRUE(bitwise_equal(state.at("w.state1"), slot.state1)) << "state1, step " << step;
      EXPECT_TRUE(bitwise_equal(state.at("w.state2"), slot.state2)) << "state2, step " << step;
      EXPECT_TRUE(bitwise_equal(state.at("w.absmax1"), slot.absmax1)) << "absmax1, step " << step;
      EXPECT_TRUE(bitwise_equal(state.at("w.absmax2"), slot.absmax2)) << "absmax2, step " << step;
      EXPECT_TRUE(bitwise_equal(w, reference)) << "parameter, step " << step;
      const auto codes1 = to_codes(state.at("w.state1")), codes2 = to_codes(state.at("w.state2"));
      for (const auto& [element, code] : tie_codes1)
        EXPECT_EQ(codes1[element], code) << "m tie at " << element;
      for (const auto& [element, code] : tie_codes2)
        EXPECT_EQ(codes2[element], code) << "v tie at " << element;
    }
    EXPECT_EQ(w.is_contiguous(), test.value.is_contiguous());
  }
}

TEST(AdamW8bit, SmallTensorsTakeThe32BitPathAndMatchAdamW) {
  torch::manual_seed(3);
  // 2000 < 4096 elements; |p| < 0.25 so that 1e-7 is a few float32 ulps of the parameter.
  const auto init = (torch::rand({40, 50}) - 0.5) * 0.5;
  auto p8 = one_parameter("b", init), p32 = one_parameter("b", init);
  AdamW8bitOptions o8;
  o8.lr = 1e-3;
  AdamWOptions o32;
  o32.lr = 1e-3;
  AdamW8bit eight(p8, o8);
  AdamW reference(p32, o32);
  double worst_param = 0, worst_m = 0, worst_v = 0;
  const auto relative = [](const torch::Tensor& a, const torch::Tensor& b) {
    return ((a - b).abs().max() / b.abs().max()).item<double>();
  };
  for (int step = 0; step < 5; ++step) {
    const auto g = torch::randn({40, 50});
    p8[0].tensor.mutable_grad() = g.clone();
    p32[0].tensor.mutable_grad() = g.clone();
    eight.step();
    reference.step();
    worst_param = std::max(worst_param, (p8[0].tensor - p32[0].tensor).abs().max().item<double>());
    const auto s8 = eight.state(), s32 = reference.state();
    ASSERT_EQ(s8.at("b.state1").scalar_type(), torch::kFloat32);
    EXPECT_EQ(s8.count("b.absmax1"), 0u);
    worst_m = std::max(worst_m, relative(s8.at("b.state1"), s32.at("b.exp_avg")));
    worst_v = std::max(worst_v, relative(s8.at("b.state2"), s32.at("b.exp_avg_sq")));
  }
  // bitsandbytes decays after the Adam step, torch before it: O(lr²·wd) apart, under float32 rounding here.
  EXPECT_LE(worst_param, 1e-7);
  // Relative to the largest moment. bitsandbytes' 1 − β is float arithmetic on float β (1 − 0.9f =
  // 0.100000024, 1 − 0.999f = 0.000999987), torch's the double 1 − β rounded to float: 2.4e-7 and
  // 1.3e-5 relative apart.
  EXPECT_LE(worst_m, 1e-6);
  EXPECT_LE(worst_v, 2e-5);
  RecordProperty("max_param_difference", sci(worst_param));
  RecordProperty("max_relative_m_difference", sci(worst_m));
  RecordProperty("max_relative_v_difference", sci(worst_v));
  EXPECT_EQ(eight.state_bytes(), 2000 * 8);
}

TEST(AdamW8bit, StateCostsAboutTwoBytesPerParameter) {
  auto params = one_parameter("big", torch::zeros({1024, 1024}));
  AdamW8bit optimizer(params);
  params[0].tensor.mutable_grad() = torch::randn({1024, 1024});
  optimizer.step();
  const double per_parameter = static_cast<double>(optimizer.state_bytes()) / (1024 * 1024);
  EXPECT_EQ(optimizer.state_bytes(), 2 * 1024 * 1024 + 2 * 4096 * 4);  // codes + float32 absmax per block
  EXPECT_LE(per_parameter, 2.1);
  RecordProperty("state_bytes_per_parameter", sci(per_parameter));
}

std::vector<NamedParameter> mixed_parameters() {
  torch::manual_seed(5);
  return {{"big", torch::randn({100, 50}).set_requires_grad(true)},   // 8-bit, partial last block
          {"small", torch::randn({10, 10}).set_requires_grad(true)},  // 32-bit
          {"unused", torch::randn({3}).set_requires_grad(true)}};     // never gets a gradient
}

std::vector<NamedParameter> clone_parameters(const std::vector<NamedParameter>& params) {
  std::vector<NamedParameter> out;
  for (const auto& p : params) out.push_back({p.name, p.tensor.detach().clone().set_requires_grad(true)});
  return out;
}

void set_gradients(std::vector<NamedParameter>& params, int step) {
  torch::manual_seed(100 + step);
  for (auto& p : params)
    if (p.name != "unused") p.tensor.mutable_grad() = torch::randn(p.tensor.sizes());
}

std::filesystem::path temp_file(const std::string& stem) {
  return std::filesystem::temp_directory_path() / (stem + "_" + std::to_string(::getpid()) + ".safetensors");
}

TEST(AdamW8bit, StateRoundTripContinuesBitIdentically) {
  auto params_a = mixed_parameters();
  AdamW8bitOptions options;
  options.lr = 2e-3;
  AdamW8bit a(params_a, options);
  for (int step = 0; step < 3; ++step) {
    set_gradients(params_a, step);
    a.step();
  }
  const auto path = temp_file("kiln_adamw8bit_state");
  save_safetensors(path, a.state());
  auto params_b = clone_parameters(params_a);
  AdamW8bit b(params_b, options);
  b.load_state(SafeTensorsFile::open(path).tensors());
  std::filesystem::remove(path);
  EXPECT_EQ(b.state_bytes(), a.state_bytes());
  for (int step = 3; step < 5; ++step) {
    set_gradients(params_a, step);
    set_gradients(params_b, step);
    a.step();
    b.step();
  }
  for (size_t i = 0; i < params_a.size(); ++i)
    EXPECT_TRUE(torch::equal(params_a[i].tensor, params_b[i].tensor)) << params_a[i].name;
  const auto sa = a.state(), sb = b.state();
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [name, tensor] : sa) EXPECT_TRUE(torch::equal(tensor, sb.at(name))) << name;
  EXPECT_EQ(sa.count("unused.state1"), 0u);
  EXPECT_EQ(sa.at("big.step").item<int64_t>(), 5);

  // Mismatches are errors, not silent resets.
  auto wrong_blocks = sa;
  wrong_blocks["big.absmax1"] = torch::zeros({3});  // e.g. a bitsandbytes < 0.44 state (blocks of 2048)
  EXPECT_THROW(b.load_state(wrong_blocks), Error);
  auto foreign = sa;
  foreign["other.state1"] = torch::zeros({3});
  EXPECT_THROW(b.load_state(foreign), Error);
  auto wrong_path = sa;
  wrong_path["small.state1"] = torch::zeros({10, 10}, torch::kUInt8);
  EXPECT_THROW(b.load_state(wrong_path), Error);
  auto incomplete = sa;
  incomplete.erase("big.absmax2");
  EXPECT_THROW(b.load_state(incomplete), Error);
}

// ---- Lion ----

TEST(Lion, OneAndTwoStepsMatchHandComputedValues) {
  auto params = one_parameter("p", torch::tensor({1.0f, -2.0f, 0.5f, 0.0f}));
  LionOptions options;
  options.lr = 0.1;
  options.weight_decay = 0.01;
  Lion lion(params, options);
  auto& p = params[0].tensor;
  // Step 1: p·0.999, m = 0, c = 0.1·g → sign(g) = [1, −1, 0, 1]; m = 0.01·g.
  p.mutable_grad() = torch::tensor({0.5f, -0.1f, 0.0f, 2.0f});
  lion.step();
  EXPECT_TRUE(torch::allclose(p, torch::tensor({0.899f, -1.898f, 0.4995f, -0.1f}), 0, 1e-6));
  EXPECT_TRUE(
      torch::allclose(lion.state().at("p.exp_avg"), torch::tensor({0.005f, -0.001f, 0.0f, 0.02f}), 0, 1e-8));
  // Step 2: c = 0.9·m + 0.1·g = [−0.0955, 0.0191, 0.03, 0.008]: the last element steps against its
  // gradient's sign; m = 0.99·m + 0.01·g.
  p.mutable_grad() = torch::tensor({-1.0f, 0.2f, 0.3f, -0.1f});
  lion.step();
  EXPECT_TRUE(torch::allclose(p, torch::tensor({0.998101f, -1.996102f, 0.3990005f, -0.1999f}), 0, 1e-6));
  EXPECT_TRUE(torch::allclose(lion.state().at("p.exp_avg"),
                              torch::tensor({-0.00505f, 0.00101f, 0.003f, 0.0188f}), 0, 1e-8));
}

TEST(Lion, StateRoundTripContinuesBitIdentically) {
  auto params_a = mixed_parameters();
  LionOptions options;
  options.lr = 1e-3;
  options.weight_decay = 0.1;
  Lion a(params_a, options);
  for (int step = 0; step < 3; ++step) {
    set_gradients(params_a, step);
    a.step();
  }
  const auto path = temp_file("kiln_lion_state");
  save_safetensors(path, a.state());
  auto params_b = clone_parameters(params_a);
  Lion b(params_b, options);
  b.load_state(SafeTensorsFile::open(path).tensors());
  std::filesystem::remove(path);
  for (int step = 3; step < 5; ++step) {
    set_gradients(params_a, step);
    set_gradients(params_b, step);
    a.step();
    b.step();
  }
  for (size_t i = 0; i < params_a.size(); ++i)
    EXPECT_TRUE(torch::equal(params_a[i].tensor, params_b[i].tensor)) << params_a[i].name;
  EXPECT_EQ(a.state().size(), 2u);
  auto wrong_shape = a.state();
  wrong_shape["big.exp_avg"] = torch::zeros({5000});
  EXPECT_THROW(b.load_state(wrong_shape), Error);
}

// ---- a short training run ----

struct Mlp : torch::nn::Module {
  // Both 64×64 = 4096 weights take the 8-bit path; the biases and the 64×1 head stay 32-bit.
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, head{nullptr};
  Mlp() {
    fc1 = register_module("fc1", torch::nn::Linear(64, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 64));
    head = register_module("head", torch::nn::Linear(64, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return head(torch::tanh(fc2(torch::tanh(fc1(x))))); }
};

std::vector<float> train_losses(bool eight_bit) {
  constexpr double kLr = 3e-3;
  torch::manual_seed(2024);
  const auto x = torch::randn({8192, 64});
  const auto teacher = torch::randn({64, 8}) / std::sqrt(64.0);
  // Noisy targets keep the loss well away from 0, where relative differences mean nothing; 8192
  // samples against ~8.4k parameters keep it from memorising the noise quickly.
  const auto y = torch::sin(x.matmul(teacher) * 2).sum(1, true) + 0.5 * torch::randn({8192, 1});
  torch::manual_seed(2025);  // the same initial weights for both optimizers
  Mlp model;
  std::vector<NamedParameter> params;
  for (const auto& item : model.named_parameters()) params.push_back({item.key(), item.value()});
  std::unique_ptr<Optimizer> optimizer;
  if (eight_bit) {
    AdamW8bitOptions o;
    o.lr = kLr;
    optimizer = std::make_unique<AdamW8bit>(params, o);
  } else {
    AdamWOptions o;
    o.lr = kLr;
    optimizer = std::make_unique<AdamW>(params, o);
  }
  std::vector<float> losses;
  for (int step = 0; step < 200; ++step) {
    optimizer->zero_grad();
    const auto loss = torch::mse_loss(model.forward(x), y);
    loss.backward();
    optimizer->step();
    losses.push_back(loss.item<float>());
  }
  return losses;
}

TEST(AdamW8bit, LossCurveTracksAdamW) {
  const auto l32 = train_losses(false), l8 = train_losses(true);
  // The run must learn for the comparison to mean anything.
  EXPECT_LT(l32.back(), 0.3f * l32.front());
  EXPECT_LT(l8.back(), 0.3f * l8.front());
  // Tolerance: final losses within 10 % of each other. Over 9 data/initialisation seeds of this
  // setup the measured difference was 0.1–3.4 % (the 8-bit run as often lower as higher); 10 % leaves
  // room for platform differences in float summation order while still catching a broken update,
  // which stalls or diverges.
  const double relative = std::abs(l8.back() - l32.back()) / l32.back();
  EXPECT_LE(relative, 0.10);
  RecordProperty("loss_first", sci(l32.front()));
  RecordProperty("loss_final_adamw", sci(l32.back()));
  RecordProperty("loss_final_adamw8bit", sci(l8.back()));
  RecordProperty("loss_final_relative_difference", sci(relative));
}

}  // namespace
}  // namespace kiln
