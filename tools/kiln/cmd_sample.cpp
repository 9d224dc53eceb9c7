// `kiln sample`: images from a checkpoint, one PNG per image with AUTOMATIC1111's "parameters"
// chunk, from --prompt or a prompts file (.txt / .json / .toml).
#include <torch/torch.h>

#include <fmt/format.h>

#include <iostream>
#include <optional>

#include "commands.h"
#include "image/png.h"
#include "models/attention.h"
#include "pipeline/a1111_parameters.h"
#include "pipeline/loaded_model.h"
#include "pipeline/prompt_file.h"
#include "pipeline/txt2img.h"
#include "sample_options.h"
#include "util/error.h"
#include "util/progress.h"

namespace kiln::cli {
namespace {

struct SampleCommand {
  SampleOptions sample;
  std::string prompt;
  std::string prompts_file;
  std::string out = "samples";
};

// A1111 numbers its outputs NNNNN-SEED.png, continuing after the highest number in the folder.
int next_image_number(const std::filesystem::path& dir) {
  int next = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    if (name.size() > 6 && name[5] == '-' && std::isdigit(static_cast<unsigned char>(name[0])))
      next = std::max(next, std::stoi(name.substr(0, 5)) + 1);
  }
  return next;
}

void run_sample(const SampleCommand& c) {
  auto defaults = c.sample.settings();
  std::vector<GenerationSettings> requests;
  if (!c.prompts_file.empty()) {
    requests = read_prompt_file(c.prompts_file, defaults);
  } else {
    defaults.prompt = c.prompt;
    validate(defaults);
    requests.push_back(defaults);
  }
  auto model = c.sample.load();
  Txt2Img txt2img(model);
  std::filesystem::create_directories(c.out);
  int number = next_image_number(c.out);
  int64_t written = 0;
  for (size_t r = 0; r < requests.size(); ++r) {
    const auto& request = requests[r];
    const auto label = requests.size() > 1 ? fmt::format("prompt {}/{}", r + 1, requests.size()) : "sampling";
    std::optional<ProgressBar> progress;
    auto on_step = [&](int64_t done, int64_t total) {
      if (!progress) progress.emplace(std::cerr, label, total);
      progress->update(done);
    };
    const auto images = txt2img.generate(request, on_step);
    progress->finish(fmt::format("{}, seed {}", request.sampler, request.seed));
    for (size_t b = 0; b < images.size(); ++b) {
      const uint64_t seed = request.seed + b;
      const auto path = std::filesystem::path(c.out) / fmt::format("{:05}-{}.png", number++, seed);
      write_png(path, images[b], {{"parameters", format_a1111_parameters(txt2img.resolved(request), seed, model.identity)}});
      std::cout << path.string() << "\n";
      ++written;
    }
  }
  std::cerr << fmt::format("wrote {} image{} to {}\n", written, written == 1 ? "" : "s", c.out);
}

}  // namespace

void add_sample_command(CLI::App& app) {
  auto command = std::make_shared<SampleCommand>();
  auto* cmd = app.add_subcommand("sample", "Generate images from a checkpoint (PNG with A1111 parameters)");
  add_sample_options(*cmd, command->sample);
  auto* prompt = cmd->add_option("--prompt,-p", command->prompt, "the prompt (A1111 emphasis syntax)");
  auto* prompts = cmd->add_option("--prompts", command->prompts_file,
                                  "prompts file: one per line (.txt), or .json / .toml entries with "
                                  "per-prompt seed, cfg, steps, width, height, sampler, negative");
  prompt->excludes(prompts);
  cmd->add_option("--out,-o", command->out, "output folder")->capture_default_str();
  cmd->add_option("--lora", command->sample.loras,
                  "LoRA file added into the weights for this run, FILE or FILE:RATIO (default 1); repeatable")
      ->allow_extra_args(false);
  cmd->callback([command, prompt, prompts] {
    if (prompt->count() == 0 && prompts->count() == 0) throw Error("give --prompt TEXT or --prompts FILE");
    run_sample(*command);
  });
}

}  // namespace kiln::cli
