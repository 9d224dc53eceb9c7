// Seconds per training step and peak memory: text encoder + UNet both training, AdamW or 8-bit
// AdamW, batch B, with or without gradient checkpointing, fp32 or bf16 autocast. One configuration
// per process (peak RSS is per process).
//   usage: bench_train tiny|sd15 SIZE BATCH CHECKPOINTING(0|1) [STEPS] [adamw|adamw8bit] [no|bf16]
#include <sys/resource.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "io/checkpoint.h"
#include "models/autocast.h"
#include "models/model_loading.h"
#include "train/diffusion_loss.h"
#include "train/adamw_8bit.h"
#include "train/optimizer.h"
#include "util/threads.h"

namespace {

double peak_rss_gib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / (1024.0 * 1024.0);
}

std::vector<kiln::NamedParameter> parameters(torch::nn::Module& module) {
  std::vector<kiln::NamedParameter> out;
  for (const auto& item : module.named_parameters()) out.push_back({item.key(), item.value()});
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: bench_train tiny|sd15 SIZE BATCH CHECKPOINTING [STEPS]\n";
    return 2;
  }
  const std::string model = argv[1];
  const int64_t size = std::stoll(argv[2]), batch = std::stoll(argv[3]);
  const bool checkpointing = std::string(argv[4]) == "1";
  const int64_t steps = argc > 5 ? std::stoll(argv[5]) : 3;
  const std::string optimizer = argc > 6 ? argv[6] : "adamw";
  const auto precision = kiln::parse_mixed_precision(argc > 7 ? argv[7] : "no");
  kiln::configure_threads();
  try {
    auto configs =
        model == "sd15"
            ? kiln::sd15_configs()
            : kiln::read_checkpoint(KILN_TINY_MODEL, std::filesystem::path(KILN_TINY_CONFIG)).configs;
    kiln::StableDiffusionModels models(configs);
    models.text_encoder->train();
    models.unet->train();
    models.text_encoder->set_gradient_checkpointing(checkpointing);
    models.unet->set_gradient_checkpointing(checkpointing);
    auto make = [&](torch::nn::Module& module, double lr) -> std::unique_ptr<kiln::Optimizer> {
      std::unique_ptr<kiln::Optimizer> o;
      if (optimizer == "adamw8bit")
        o = std::make_unique<kiln::AdamW8bit>(parameters(module));
      else
        o = std::make_unique<kiln::AdamW>(parameters(module), kiln::AdamWOptions{});
      o->set_learning_rate(lr);
      return o;
    };
    auto te = make(*models.text_encoder, 1.5e-7);
    auto unet = make(*models.unet, 5e-8);
    const kiln::NoiseSchedule schedule;
    const int64_t side = size / 8;
    auto ids = torch::randint(0, 49408, {batch, 77}, torch::kLong);
    auto latents = torch::randn({batch, 4, side, side});
    double total = 0;
    for (int64_t step = 0; step <= steps; ++step) {  // step 0 warms up (allocations, optimizer state)
      const auto start = std::chrono::steady_clock::now();
      auto noise = torch::randn_like(latents);
      auto t = torch::randint(0, 1000, {batch}, torch::kLong);
      torch::Tensor pred;
      {
        const kiln::AutocastGuard autocast(torch::kCPU, precision);
        auto context = models.text_encoder->encode(ids);
        pred = models.unet->forward(kiln::add_noise(schedule, latents, noise, t), t, context);
      }
      auto loss = kiln::diffusion_loss(schedule, pred, noise, t, {});
      loss.backward();
      te->step();
      unet->step();
      te->zero_grad();
      unet->zero_grad();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (step > 0) total += seconds;
    }
    std::cout << fmt::format("| {} | {}² | {} | {} | {} | {} | {:.3f} | {:.1f} |\n", model, size, batch,
                             checkpointing ? "on" : "off", optimizer, kiln::mixed_precision_name(precision),
                             total / static_cast<double>(steps), peak_rss_gib());
  } catch (const std::exception& e) {
    std::cout << fmt::format("| {} | {}² | {} | {} | {} | {} | failed: {} | {:.1f} |\n", model, size, batch,
                             checkpointing ? "on" : "off", optimizer, argc > 7 ? argv[7] : "no",
                             std::string(e.what()).substr(0, 60), peak_rss_gib());
  }
  return 0;
}
