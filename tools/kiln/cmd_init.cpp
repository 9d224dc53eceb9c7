// `kiln init OUT --arch sd15|tiny`: a randomly initialised model of a known architecture.
#include <torch/torch.h>

#include <iostream>

#include "commands.h"
#include "io/checkpoint.h"
#include "models/configs.h"
#include "models/model_loading.h"
#include "util/error.h"
#include "util/atomic_file.h"

namespace kiln::cli {
namespace {

struct InitOptions {
  std::string out;
  std::string arch = "sd15";
  uint64_t seed = 0;
  std::string layout = "ldm";
  std::string dtype = "fp32";
};

void run_init(const InitOptions& o) {
  require_output_folder(o.out);
  const ModelConfigs configs = o.arch == "tiny" ? tiny_configs() : sd15_configs();
  torch::manual_seed(o.seed);  // library default init (as diffusers/transformers construct), seeded
  StableDiffusionModels models(configs);
  Checkpoint checkpoint = checkpoint_from_models(models);
  checkpoint.metadata["kiln_init"] = o.arch + " seed " + std::to_string(o.seed);
  write_checkpoint(checkpoint, o.out, parse_layout(o.layout), parse_dtype(o.dtype));
  std::cout << "wrote " << o.out << " (" << o.arch << ", " << o.layout << ", " << o.dtype << ")\n";
}

}  // namespace

void add_init_command(CLI::App& app) {
  auto options = std::make_shared<InitOptions>();
  auto* cmd = app.add_subcommand("init", "Write a randomly initialised model of a known architecture");
  cmd->add_option("OUT", options->out, "output .safetensors file (ldm) or folder (diffusers)")->required();
  cmd->add_option("--arch", options->arch, "architecture")
      ->check(CLI::IsMember({"sd15", "tiny"}))
      ->capture_default_str();
  cmd->add_option("--seed", options->seed, "random seed")->capture_default_str();
  cmd->add_option("--layout", options->layout, "checkpoint layout")
      ->check(CLI::IsMember({"ldm", "diffusers"}))
      ->capture_default_str();
  cmd->add_option("--dtype", options->dtype, "stored precision")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  cmd->callback([options] { run_init(*options); });
}

}  // namespace kiln::cli
