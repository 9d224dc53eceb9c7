// Where the time goes: one full-size SD 1.5 UNet pass (forward, or forward + backward) under
// libtorch's profiler, with each operator's self time (its time minus the operators it called) and
// share. usage: bench_profile forward|backward LATENT_SIDE [contiguous|channels_last] [CHUNK_MIB]
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "models/configs.h"
#include "models/unet.h"
#include "util/threads.h"

#if __has_include(<torch/csrc/autograd/profiler_legacy.h>)
#include <torch/csrc/autograd/profiler_legacy.h>
#define KILN_HAVE_LEGACY_PROFILER 1
#endif

namespace {

struct OpTime {
  double self_us = 0;
  int64_t calls = 0;
};

#ifdef KILN_HAVE_LEGACY_PROFILER
namespace profiler = torch::autograd::profiler;

// Self time per operator name: each push/pop pair's span minus the spans of the pairs nested in it.
std::map<std::string, OpTime> self_times(const profiler::thread_event_lists& lists) {
  std::map<std::string, OpTime> out;
  struct Open {
    const profiler::LegacyEvent* start;
    double children_us = 0;
  };
  for (const auto& events : lists) {
    std::vector<Open> stack;
    for (const auto& e : events) {
      if (e.kindStr() == "push") {
        stack.push_back({&e});
      } else if (e.kindStr() == "pop" && !stack.empty()) {
        const auto open = stack.back();
        stack.pop_back();
        const double span = open.start->cpuElapsedUs(e);
        auto& op = out[open.start->name()];
        op.self_us += span - open.children_us;
        ++op.calls;
        if (!stack.empty()) stack.back().children_us += span;
      }
    }
  }
  return out;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_profile forward|backward LATENT_SIDE [contiguous|channels_last]\n");
    return 2;
  }
  const std::string mode = argv[1];
  const int64_t side = std::stoll(argv[2]);
  const bool channels_last = argc > 3 && std::string(argv[3]) == "channels_last";
  kiln::configure_threads();
  kiln::UNet2DConditionModel unet(kiln::sd15_configs().unet);
  if (argc > 4) unet->set_attention({kiln::AttentionKernel::Chunked, std::stoll(argv[4]) << 20});
  auto sample = torch::randn({1, 4, side, side});
  if (channels_last) {
    // The C++ Module::to has no memory-format overload: convolution weights are converted one by one.
    torch::NoGradGuard no_grad;
    for (auto& p : unet->parameters())
      if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    sample = sample.contiguous(torch::MemoryFormat::ChannelsLast);
  }
  const auto timestep = torch::tensor({500}, torch::kLong);
  const auto context = torch::randn({1, 77, 768});
  const bool backward = mode == "backward";
  unet->train(backward);
  auto pass = [&] {
    if (backward) {
      unet->forward(sample, timestep, context).square().mean().backward();
      unet->zero_grad();
    } else {
      torch::NoGradGuard no_grad;
      unet->forward(sample, timestep, context);
    }
  };
  pass();  // warm-up: allocator, oneDNN primitive caches
  const auto start = std::chrono::steady_clock::now();
  pass();
  const double plain_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s, latent %lldx%lld, %s, %d threads: %.2f s per pass (unprofiled)\n", mode.c_str(),
              static_cast<long long>(side), static_cast<long long>(side),
              channels_last ? "channels_last" : "contiguous", torch::get_num_threads(), plain_s);
#ifdef KILN_HAVE_LEGACY_PROFILER
  profiler::thread_event_lists lists;
  {
    profiler::enableProfilerLegacy(torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU));
    pass();
    lists = profiler::disableProfilerLegacy();
  }
  const auto times = self_times(lists);
  std::vector<std::pair<std::string, OpTime>> sorted(times.begin(), times.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.self_us > b.second.self_us; });
  double total = 0;
  for (const auto& [name, t] : sorted) total += t.self_us;
  std::printf("\n| operator | calls | self s | share |\n|---|---|---|---|\n");
  double shown = 0;
  for (size_t i = 0; i < sorted.size() && i < 18; ++i) {
    const auto& [name, t] = sorted[i];
    shown += t.self_us;
    std::printf("| %s | %lld | %.3f | %.1f %% |\n", name.c_str(), static_cast<long long>(t.calls),
                t.self_us * 1e-6, 100.0 * t.self_us / total);
  }
  std::printf("| (all others) | | %.3f | %.1f %% |\n", (total - shown) * 1e-6, 100.0 * (total - shown) / total);
  std::printf("\nprofiled self time %.2f s\n", total * 1e-6);
#else
  std::printf("this libtorch has no legacy profiler: operator table skipped\n");
#endif
  return 0;
}
