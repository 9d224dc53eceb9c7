// Time and peak memory to open a full-size SD 1.5 checkpoint and load it into fp32 modules.
// Runs in its own process so the peak RSS it reports belongs to the load alone.
// usage: bench_load MODEL.safetensors|FOLDER [--config PATH]
#include <sys/resource.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "io/checkpoint.h"
#include "models/model_loading.h"
#include "util/threads.h"

namespace {

double peak_rss_gib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL [--config PATH]\n", argv[0]);
    return 2;
  }
  std::optional<std::filesystem::path> config;
  if (argc >= 4 && std::string(argv[2]) == "--config") config = argv[3];
  kiln::configure_threads();
  try {
    const double rss_before = peak_rss_gib();
    const auto start = std::chrono::steady_clock::now();
    auto checkpoint = kiln::read_checkpoint(argv[1], config);
    const double t_open = seconds_since(start);
    auto models = kiln::build_models(checkpoint);
    const double t_total = seconds_since(start);
    std::printf(
        "{\"open_s\": %.3f, \"open_and_load_s\": %.3f, \"peak_rss_gib\": %.3f, \"rss_before_gib\": %.3f}\n",
        t_open, t_total, peak_rss_gib(), rss_before);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_load: %s\n", e.what());
    return 1;
  }
  return 0;
}
