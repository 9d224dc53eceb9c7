// Seconds per sampling step and peak memory of txt2img with the full-size SD 1.5 networks (random
// weights: time and memory do not depend on the values), for one attention kernel and size.
// Peak memory is per process, so bench/run.sh starts one process per configuration.
//   usage: bench_sampling SIZE ATTENTION [STEPS]     e.g. bench_sampling 512 chunked 2
#include <sys/resource.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "models/attention.h"
#include "models/configs.h"
#include "pipeline/txt2img.h"
#include "util/threads.h"

namespace {

double peak_rss_gib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is in KiB
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: bench_sampling SIZE plain|chunked|fused [STEPS]\n";
    return 2;
  }
  const int64_t size = std::stoll(argv[1]);
  const std::string attention = argv[2];
  const int64_t steps = argc > 3 ? std::stoll(argv[3]) : 2;
  kiln::configure_threads();
  torch::NoGradGuard no_grad;
  kiln::StableDiffusionModels models(kiln::sd15_configs());
  const kiln::AttentionOptions options{kiln::parse_attention_kernel(attention)};
  models.unet->set_attention(options);
  models.vae->set_attention(options);
  const double weights_gib = peak_rss_gib();

  kiln::Txt2Img txt2img(models, kiln::CLIPTokenizer::from_embedded());
  kiln::GenerationSettings s;
  s.prompt = "a photo of a person";
  s.sampler = "dpmpp_2m_karras";
  s.steps = steps;
  s.cfg = 7.0;  // guidance: the UNet runs on a batch of 2
  s.width = s.height = size;
  using clock = std::chrono::steady_clock;
  std::vector<clock::time_point> marks;
  const auto start = clock::now();
  auto latents = txt2img.sample_latents(s, [&](int64_t, int64_t) { marks.push_back(clock::now()); });
  const auto decode_start = clock::now();
  txt2img.decode(latents);
  const auto end = clock::now();
  auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  // marks[0] is taken after the prompt encoding, before the first step.
  const double per_step = seconds(marks.front(), marks.back()) / static_cast<double>(steps);
  std::cout << fmt::format("| {}² | {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.1f} | {:.1f} |\n", size,
                           attention, steps, per_step, seconds(decode_start, end), seconds(start, end),
                           weights_gib, peak_rss_gib());
  return 0;
}
