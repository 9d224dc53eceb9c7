// Forward time of each full-size SD 1.5 network at 512x512 on this CPU, beside the fp32 matrix-multiply
// rate measured in the same run (the ratio is what compares across noisy shared machines).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "models/attention.h"
#include "models/onednn.h"
#include "models/autocast.h"
#include "models/clip_text.h"
#include "models/configs.h"
#include "models/unet.h"
#include "models/vae.h"
#include "util/threads.h"

namespace {

// Counted FLOPs of one SD 1.5 UNet pass at a 64x64 latent (convs, linears, attention matmuls),
// from ../shared/docs/targets.md; used to express the UNet time as a rate.
constexpr double kUNetFlops64 = 803e9;

void BM_MatmulFp32(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const int64_t n = state.range(0);
  auto a = torch::randn({n, n}), b = torch::randn({n, n});
  // The machine's practical GEMM peak: OpenBLAS on every core (kiln runs it single-threaded inside
  // torch's own threads, see util/threads.h).
  kiln::set_blas_threads(torch::get_num_threads());
  for (auto _ : state) benchmark::DoNotOptimize(torch::mm(a, b));
  kiln::set_blas_threads(1);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * n * n * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MatmulFp32)->Arg(2048)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();

// One SD 1.5 attention call (batch 1): args q_len, k_len, channels, heads, kernel (0 chunked, 1 onednn).
// 4096/4096/320 is the 512² image's biggest self-attention; k_len 77 is a cross-attention.
void BM_Attention(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const int64_t q_len = state.range(0), k_len = state.range(1), channels = state.range(2), heads = state.range(3);
  const auto kernel = state.range(4) == 1 ? kiln::AttentionKernel::OneDnn : kiln::AttentionKernel::Chunked;
  if (kernel == kiln::AttentionKernel::OneDnn && !kiln::onednn_available()) {
    state.SkipWithError("built without oneDNN");
    return;
  }
  auto q = torch::randn({1, q_len, channels}), k = torch::randn({1, k_len, channels}), v = torch::randn({1, k_len, channels});
  for (auto _ : state) benchmark::DoNotOptimize(kiln::multi_head_attention(q, k, v, heads, std::nullopt, {kernel}));
  state.counters["GFLOP/s"] = benchmark::Counter(4.0 * q_len * k_len * channels * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Attention)
    ->ArgNames({"q", "k", "ch", "heads", "onednn"})
    ->ArgsProduct({{4096}, {4096, 77}, {320}, {8}, {0, 1}})
    ->ArgsProduct({{1024}, {1024, 77}, {640}, {8}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0)
    ->UseRealTime();

void BM_UNetForward(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const int64_t side = state.range(0);  // latent side: 64 = 512 px
  kiln::UNet2DConditionModel unet(kiln::sd15_configs().unet);
  unet->eval();
  // Second argument: the attention kernel, 0 chunked (libtorch's bmm), 1 auto (oneDNN where built in).
  if (state.range(1) == 0) unet->set_attention({kiln::AttentionKernel::Chunked});
  auto sample = torch::randn({1, 4, side, side});
  auto timestep = torch::tensor({500}, torch::kLong);
  auto context = torch::randn({1, 77, 768});
  // One pass first, untimed: a sampler runs many, and the first pays for oneDNN's kernel compilation.
  unet->forward(sample, timestep, context);
  for (auto _ : state) benchmark::DoNotOptimize(unet->forward(sample, timestep, context));
  const double flops = kUNetFlops64 * (side * side) / (64.0 * 64.0);  // attention excepted, ~linear in pixels
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_UNetForward)
    ->ArgNames({"side", "auto_attention"})
    ->ArgsProduct({{32, 64}, {0, 1}})
    ->Unit(benchmark::kSecond)
    ->Iterations(2)
    ->UseRealTime();

// The same pass under bf16 autocast (training.mixed_precision = "bf16"): oneDNN uses AVX-512 BF16 /
// AMX where the CPU has them. The rate still counts the fp32 FLOPs, against the fp32 matmul rate.
void BM_UNetForwardBf16Autocast(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  const int64_t side = state.range(0);
  kiln::UNet2DConditionModel unet(kiln::sd15_configs().unet);
  unet->eval();
  auto sample = torch::randn({1, 4, side, side});
  auto timestep = torch::tensor({500}, torch::kLong);
  auto context = torch::randn({1, 77, 768});
  const kiln::AutocastGuard autocast(torch::kCPU, kiln::MixedPrecision::BF16);
  unet->forward(sample, timestep, context);  // untimed, as in BM_UNetForward
  for (auto _ : state) benchmark::DoNotOptimize(unet->forward(sample, timestep, context));
  const double flops = kUNetFlops64 * (side * side) / (64.0 * 64.0);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_UNetForwardBf16Autocast)->Arg(64)->Unit(benchmark::kSecond)->Iterations(2)->UseRealTime();

void BM_TextEncoderForward(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  kiln::CLIPTextModel text_encoder(kiln::sd15_configs().text_encoder);
  text_encoder->eval();
  auto ids = torch::randint(0, 49408, {1, 77}, torch::kLong);
  for (auto _ : state) benchmark::DoNotOptimize(text_encoder->forward(ids).last_hidden_state);
}
BENCHMARK(BM_TextEncoderForward)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();

void BM_VAEEncode(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  kiln::AutoencoderKL vae(kiln::sd15_configs().vae);
  vae->eval();
  auto image = torch::rand({1, 3, 512, 512}) * 2 - 1;
  for (auto _ : state) benchmark::DoNotOptimize(vae->encode(image).mean);
}
BENCHMARK(BM_VAEEncode)->Unit(benchmark::kSecond)->Iterations(1)->UseRealTime();

void BM_VAEDecode(benchmark::State& state) {
  torch::NoGradGuard no_grad;
  kiln::AutoencoderKL vae(kiln::sd15_configs().vae);
  vae->eval();
  auto latent = torch::randn({1, 4, 64, 64});
  for (auto _ : state) benchmark::DoNotOptimize(vae->decode(latent));
}
BENCHMARK(BM_VAEDecode)->Unit(benchmark::kSecond)->Iterations(1)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  kiln::configure_threads();
  benchmark::AddCustomContext("torch_threads", std::to_string(torch::get_num_threads()));
  benchmark::AddCustomContext("torch_config", torch::show_config());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
