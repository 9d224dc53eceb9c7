// `kiln lora merge MODEL LORA[:ratio]... --out OUT`: bake LoRA files into a checkpoint.
// `kiln lora extract TUNED BASE --rank R --out LORA`: the LoRA closest to a fine-tune (truncated SVD).
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <numeric>
#include <optional>

#include "commands.h"
#include "io/checkpoint.h"
#include "surgery/lora.h"
#include "surgery/lora_merge.h"
#include "util/error.h"
#include "util/atomic_file.h"

namespace kiln::cli {
namespace {

std::optional<std::filesystem::path> optional_path(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return s;
}

struct MergeOptions {
  std::string model;
  std::vector<std::string> loras;
  std::string out;
  std::string config;
  std::string dtype;   // empty: as stored
  std::string layout;  // empty: the input's
};

void run_merge(const MergeOptions& o) {
  require_output_folder(o.out);
  Checkpoint checkpoint = read_checkpoint(o.model, optional_path(o.config));
  // Every file is read (and checked) before anything is merged or written.
  const LoraTargets targets = lora_targets(checkpoint);
  std::vector<std::pair<LoraSpec, LoraFile>> loras;
  for (const auto& text : o.loras) {
    auto spec = parse_lora_spec(text);
    auto file = read_lora(spec.path, targets);
    loras.emplace_back(std::move(spec), std::move(file));
  }
  for (const auto& [spec, lora] : loras) {
    merge_lora(checkpoint, lora, spec.ratio);
    std::cout << fmt::format("merged {} at {} ({} modules)\n", spec.path.string(), spec.ratio,
                             lora.modules.size());
  }
  const auto layout = o.layout.empty() ? checkpoint.layout : parse_layout(o.layout);
  std::optional<torch::ScalarType> dtype;
  if (!o.dtype.empty()) dtype = parse_dtype(o.dtype);
  write_checkpoint(checkpoint, o.out, layout, dtype);
  std::cout << "wrote " << o.out << " (" << layout_name(layout) << (o.dtype.empty() ? "" : ", " + o.dtype)
            << ")\n";
}

struct ExtractOptions {
  std::string tuned;
  std::string base;
  int64_t rank = 0;
  std::string out;
  std::string config;
  std::string dtype = "fp32";
};

void run_extract(const ExtractOptions& o) {
  require_output_folder(o.out);
  const auto config = optional_path(o.config);
  const Checkpoint tuned = read_checkpoint(o.tuned, config);
  const Checkpoint base = read_checkpoint(o.base, config);
  std::vector<double> energy;
  LoraFile lora = extract_lora(tuned, base, o.rank, &energy);
  if (lora.modules.empty())
    throw Error(o.tuned + " and " + o.base + " have the same weights: nothing to extract");
  lora.metadata["ss_sd_model_name"] = std::filesystem::path(o.base).filename().string();
  lora.metadata["kiln_extracted_from"] = std::filesystem::path(o.tuned).filename().string();
  save_lora(o.out, lora, parse_dtype(o.dtype));
  const auto count = [&](Component c) {
    return std::count_if(lora.modules.begin(), lora.modules.end(),
                         [c](const auto& m) { return m.component == c; });
  };
  const double mean = std::accumulate(energy.begin(), energy.end(), 0.0) / static_cast<double>(energy.size());
  const auto worst = std::min_element(energy.begin(), energy.end()) - energy.begin();
  std::cout << fmt::format("{} modules ({} unet, {} text encoder) at rank {}\n", lora.modules.size(),
                           count(Component::UNet), count(Component::TextEncoder), o.rank);
  std::cout << fmt::format("retained energy: mean {:.6f}, min {:.6f} ({})\n", mean, energy[worst],
                           lora.modules[worst].name);
  std::cout << "wrote " << o.out << " (" << o.dtype << ")\n";
}

}  // namespace

void add_lora_command(CLI::App& app) {
  auto* lora = app.add_subcommand("lora", "LoRA files (kohya format): merge into a checkpoint, extract");
  lora->require_subcommand(1);

  auto merge = std::make_shared<MergeOptions>();
  auto* m = lora->add_subcommand("merge",
                                 "Merge LoRA files into a checkpoint (W += ratio * alpha/rank * up @ down)");
  m->add_option("MODEL", merge->model, "checkpoint: .safetensors file or diffusers folder")->required();
  m->add_option("LORA", merge->loras, "LoRA file, optionally FILE:RATIO (default ratio 1); repeatable")
      ->required();
  m->add_option("--out,-o", merge->out, "output .safetensors file (ldm) or folder (diffusers)")->required();
  m->add_option("--config", merge->config,
                "diffusers model folder or config.json for a non-SD-1.5 architecture");
  m->add_option("--dtype", merge->dtype, "output precision of floating tensors (default: as stored)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  m->add_option("--layout", merge->layout, "output layout (default: the input's)")
      ->check(CLI::IsMember({"ldm", "diffusers"}));
  m->callback([merge] { run_merge(*merge); });

  auto extract = std::make_shared<ExtractOptions>();
  auto* e = lora->add_subcommand("extract", "Extract a LoRA from a fine-tuned checkpoint and its base (SVD)");
  e->add_option("TUNED", extract->tuned, "the fine-tuned checkpoint")->required();
  e->add_option("BASE", extract->base, "the checkpoint it was tuned from")->required();
  e->add_option("--rank,-r", extract->rank, "LoRA rank (network dim)")
      ->required()
      ->check(CLI::PositiveNumber);
  e->add_option("--out,-o", extract->out, "output LoRA .safetensors file")->required();
  e->add_option("--config", extract->config,
                "diffusers model folder or config.json for a non-SD-1.5 architecture");
  e->add_option("--dtype", extract->dtype, "precision of lora_down / lora_up")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  e->callback([extract] { run_extract(*extract); });
}

}  // namespace kiln::cli
