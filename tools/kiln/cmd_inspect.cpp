// `kiln inspect FILE_OR_FOLDER`: what a checkpoint holds — layout, components, dtypes, parameter
// counts, metadata and the hashes AUTOMATIC1111 shows — for people (default) or scripts (--json).
#include <fmt/format.h>
#include <torch/torch.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "commands.h"
#include "io/checkpoint.h"
#include "util/error.h"
#include "util/sha256.h"

namespace kiln::cli {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

struct InspectOptions {
  std::string path;
  std::string config;
  bool as_json = false;
};

std::string with_thousands(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

json describe_tensors(const StateDict& tensors) {
  int64_t parameters = 0;
  std::map<std::string, int64_t> dtypes;
  for (const auto& [name, t] : tensors) {
    if (t.is_floating_point()) parameters += t.numel();
    ++dtypes[std::string(c10::toString(t.scalar_type()))];
  }
  return {{"tensors", tensors.size()}, {"parameters", parameters}, {"dtypes", dtypes}};
}

// A1111 hashes the bytes of one checkpoint file; a diffusers folder (which A1111 does not load) has
// no such hash, and a made-up one (say, of its UNet file) would match nothing A1111 shows.
constexpr const char* kNoFolderHash =
    "none: A1111 hashes single checkpoint files; `kiln convert FOLDER model.safetensors` makes one";

json inspect(const InspectOptions& o) {
  std::optional<fs::path> config;
  if (!o.config.empty()) config = o.config;
  const Checkpoint checkpoint = read_checkpoint(o.path, config);
  json report;
  report["path"] = o.path;
  report["layout"] = layout_name(checkpoint.layout);
  report["architecture"] = checkpoint.architecture;
  json components = json::object();
  if (!checkpoint.unet.empty()) components["unet"] = describe_tensors(checkpoint.unet);
  if (!checkpoint.text_encoder.empty())
    components["text_encoder"] = describe_tensors(checkpoint.text_encoder);
  if (!checkpoint.vae.empty()) components["vae"] = describe_tensors(checkpoint.vae);
  if (!checkpoint.extra.empty()) components["other"] = describe_tensors(checkpoint.extra);
  report["components"] = components;
  report["metadata"] = checkpoint.metadata;
  if (fs::is_regular_file(o.path)) {
    report["file_bytes"] = fs::file_size(o.path);
    const std::string sha = sha256_file(o.path);
    report["sha256"] = sha;
    report["autov2_hash"] = sha.substr(0, 10);  // A1111's short hash, as shown in infotext "Model hash"
    report["legacy_hash"] = a1111_legacy_hash(o.path);
  } else {
    report["autov2_hash"] = nullptr;
    report["a1111_hash_note"] = kNoFolderHash;
  }
  return report;
}

void print_human(const json& r) {
  std::cout << fmt::format("{}\n", r["path"].get<std::string>());
  std::cout << fmt::format("  layout        {}\n", r["layout"].get<std::string>());
  std::cout << fmt::format("  architecture  {}\n", r["architecture"].get<std::string>());
  if (r.contains("sha256")) {
    std::cout << fmt::format("  size          {:.1f} MB\n", r["file_bytes"].get<double>() / 1e6);
    std::cout << fmt::format("  sha256        {}\n", r["sha256"].get<std::string>());
    std::cout << fmt::format("  A1111 hash    {}  (legacy: {})\n", r["autov2_hash"].get<std::string>(),
                             r["legacy_hash"].get<std::string>());
  } else {
    std::cout << fmt::format("  A1111 hash    {}\n", r["a1111_hash_note"].get<std::string>());
  }
  std::cout << "  components\n";
  for (const auto& [name, c] : r["components"].items()) {
    std::string dtypes;
    for (const auto& [dtype, count] : c["dtypes"].items())
      dtypes += fmt::format("{}{} x{}", dtypes.empty() ? "" : ", ", dtype, count.get<int64_t>());
    std::cout << fmt::format("    {:<13} {:>5} tensors {:>15} parameters  ({})\n", name,
                             c["tensors"].get<int64_t>(), with_thousands(c["parameters"].get<int64_t>()),
                             dtypes);
  }
  if (!r["metadata"].empty()) {
    std::cout << "  metadata\n";
    for (const auto& [key, value] : r["metadata"].items()) {
      std::string text = value.get<std::string>();
      if (text.size() > 100) text = text.substr(0, 97) + "...";
      std::cout << fmt::format("    {}: {}\n", key, text);
    }
  }
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  auto* cmd =
      app.add_subcommand("inspect", "Show what a checkpoint holds: layout, components, dtypes, hashes");
  cmd->add_option("FILE_OR_FOLDER", options->path, "checkpoint: .safetensors file or diffusers folder")
      ->required();
  cmd->add_option("--config", options->config, "diffusers model folder or component config.json");
  cmd->add_flag("--json", options->as_json, "machine-readable output");
  cmd->callback([options] {
    const json report = inspect(*options);
    if (options->as_json)
      std::cout << report.dump(2) << "\n";
    else
      print_human(report);
  });
}

}  // namespace kiln::cli
