// Optimizer step time and optimizer-state bytes per parameter on the full-size SD 1.5 UNet
// parameter set (860 M parameters, random gradients). One optimizer per process (peak RSS).
//   usage: bench_optimizers adamw|adamw8bit|lion|sgd|dadapt_adam|prodigy [STEPS]
#include <sys/resource.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "models/configs.h"
#include "models/unet.h"
#include "train/optimizer_factory.h"
#include "util/threads.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_optimizers OPTIMIZER [STEPS]\n";
    return 2;
  }
  const std::string name = argv[1];
  const int steps = argc > 2 ? std::stoi(argv[2]) : 3;
  kiln::configure_threads();
  kiln::UNet2DConditionModel unet(kiln::sd15_configs().unet);
  std::vector<kiln::NamedParameter> parameters;
  int64_t count = 0;
  for (const auto& item : unet->named_parameters()) {
    item.value().mutable_grad() = torch::randn_like(item.value()) * 1e-3;
    parameters.push_back({item.key(), item.value()});
    count += item.value().numel();
  }
  kiln::PartSection settings;
  settings.optimizer = name;
  settings.lr = name == "dadapt_adam" || name == "prodigy" ? 1.0 : 1e-6;
  auto optimizers = kiln::make_optimizers({{"unet", &settings, parameters}});
  auto& optimizer = *optimizers.entries.at(0).optimizer;
  optimizer.step();  // first step allocates the state
  double seconds = 0;
  for (int i = 0; i < steps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    optimizer.step();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  int64_t state_bytes = 0;
  for (const auto& [key, tensor] : optimizer.state())
    state_bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::cout << fmt::format("| {} | {:.1f} M | {:.2f} | {:.3f} | {:.2f} | {:.1f} |\n", name, count / 1e6,
                           seconds / steps, static_cast<double>(state_bytes) / static_cast<double>(count),
                           state_bytes / 1073741824.0, usage.ru_maxrss / 1048576.0);
  return 0;
}
