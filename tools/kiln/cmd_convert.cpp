// `kiln convert IN OUT --layout ldm|diffusers --dtype fp32|fp16|bf16`: layout and precision conversion.
#include <torch/torch.h>

#include <iostream>
#include <optional>

#include "commands.h"
#include "io/checkpoint.h"
#include "util/error.h"
#include "util/atomic_file.h"

namespace kiln::cli {
namespace {

struct ConvertOptions {
  std::string in;
  std::string out;
  std::string layout = "ldm";
  std::string dtype;  // empty: keep each tensor's stored precision
  std::string config;
};

void run_convert(const ConvertOptions& o) {
  require_output_folder(o.out);
  std::optional<std::filesystem::path> config;
  if (!o.config.empty()) config = o.config;
  const Checkpoint checkpoint = read_checkpoint(o.in, config);
  std::optional<torch::ScalarType> dtype;
  if (!o.dtype.empty()) dtype = parse_dtype(o.dtype);
  write_checkpoint(checkpoint, o.out, parse_layout(o.layout), dtype);
  std::cout << "wrote " << o.out << " (" << o.layout << (o.dtype.empty() ? "" : ", " + o.dtype) << ")\n";
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto options = std::make_shared<ConvertOptions>();
  auto* cmd = app.add_subcommand("convert", "Convert a checkpoint between layouts and precisions");
  cmd->add_option("IN", options->in, "checkpoint: .safetensors file or diffusers folder")->required();
  cmd->add_option("OUT", options->out, "output .safetensors file (ldm) or folder (diffusers)")->required();
  cmd->add_option("--layout", options->layout, "output layout")
      ->check(CLI::IsMember({"ldm", "diffusers"}))
      ->capture_default_str();
  cmd->add_option("--dtype", options->dtype, "output precision of floating tensors (default: as stored)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  cmd->add_option("--config", options->config,
                  "diffusers model folder or component config.json (for non-SD-1.5 architectures)");
  cmd->callback([options] { run_convert(*options); });
}

}  // namespace kiln::cli
