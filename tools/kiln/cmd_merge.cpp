// `kiln merge`: checkpoint merging as A1111's merger and SuperMerger do it.
//   kiln merge A B --alpha 0.3 --out OUT                        (1 − α)·A + α·B
//   kiln merge A B C --add-difference --multiplier 1 --out OUT  A + m·(B − C)
//   kiln merge A B --text-encoder-from A --unet-from B --vae-from B --out OUT   (swaps)
//   kiln merge A B --unet-blocks "25 values" --base-alpha 0.2 --out OUT         (block weights)
//   kiln merge --recipe FILE --out OUT
// The flags make a one-step recipe, so a command-line merge records itself like a recipe file does.
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <iostream>
#include <optional>
#include <sstream>

#include "commands.h"
#include "io/checkpoint.h"
#include "surgery/merge_recipe.h"
#include "util/error.h"
#include "util/atomic_file.h"

namespace kiln::cli {
namespace {

constexpr std::array<const char*, 3> kInputNames = {"A", "B", "C"};

struct MergeOptions {
  std::vector<std::string> inputs;
  std::string out;
  std::string recipe;
  bool add_difference = false;
  std::optional<double> alpha, multiplier, base_alpha, unet_alpha, text_encoder_alpha, vae_alpha;
  std::string unet_from, text_encoder_from, vae_from;
  std::string unet_blocks;
  std::string config;
  std::string layout = "ldm";
  std::string dtype;
};

// "0, 0.1, ..." -> 25 values (IN00..OUT11), or 26 with BASE first as SuperMerger writes them.
std::vector<double> parse_blocks(const std::string& text) {
  std::vector<double> values;
  std::string item;
  std::istringstream in(text);
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    double value = 0;
    try {
      value = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || item.find_first_not_of(" \t", used) != std::string::npos)
      throw Error(fmt::format("--unet-blocks: '{}' is not a number", item));
    values.push_back(value);
  }
  if (values.size() != kUNetBlockWeightCount && values.size() != kMergeBlockCount)
    throw Error(
        fmt::format("--unet-blocks takes 25 comma-separated numbers (IN00..IN11, M00, OUT00..OUT11) or 26 "
                    "with BASE first; got {}",
                    values.size()));
  return values;
}

MergeRecipe recipe_from_flags(const MergeOptions& o) {
  if (o.inputs.size() < 2 || o.inputs.size() > 3)
    throw Error("merge takes 2 or 3 checkpoints (A B [C]) or --recipe FILE");
  MergeRecipe recipe;
  for (size_t i = 0; i < o.inputs.size(); ++i)
    recipe.inputs.push_back({kInputNames[i], o.inputs[i], std::nullopt});

  RecipeStep step;
  step.name = "merge";
  MergeSpec& spec = step.spec;
  const std::pair<Component, const std::string*> takes[] = {{Component::UNet, &o.unet_from},
                                                            {Component::TextEncoder, &o.text_encoder_from},
                                                            {Component::VAE, &o.vae_from}};
  bool all_taken = true;
  for (const auto& [c, from] : takes) {
    if (from->empty()) all_taken = false;
    if (!from->empty() && (*from)[0] - 'A' >= static_cast<int>(o.inputs.size()))
      throw Error(fmt::format("--{}-from {}: there is no input {}", component_name(c), *from, *from));
  }
  if (all_taken) {
    if (o.add_difference || o.alpha || o.multiplier || o.base_alpha || !o.unet_blocks.empty() ||
        o.unet_alpha || o.text_encoder_alpha || o.vae_alpha)
      throw Error(
          "with every component taken from one input (--*-from) there is nothing to merge: drop the alphas");
    step.kind = RecipeStepKind::Swap;
    for (size_t i = 0; i < o.inputs.size(); ++i)
      for (const auto& [c, from] : takes)
        if (*from == kInputNames[i] &&
            std::find(step.operands.begin(), step.operands.end(), *from) == step.operands.end())
          step.operands.push_back(*from);
    for (const auto& [c, from] : takes)
      spec.component(c).from = static_cast<size_t>(
          std::find(step.operands.begin(), step.operands.end(), *from) - step.operands.begin());
  } else {
    step.kind = o.add_difference ? RecipeStepKind::AddDifference : RecipeStepKind::WeightedSum;
    spec.method = o.add_difference ? MergeMethod::AddDifference : MergeMethod::WeightedSum;
    if (o.add_difference && o.inputs.size() != 3)
      throw Error("--add-difference takes three checkpoints: A B C");
    if (o.add_difference && o.alpha) throw Error("--add-difference takes --multiplier, not --alpha");
    if (!o.add_difference && o.multiplier)
      throw Error("--multiplier goes with --add-difference; use --alpha");
    step.operands = {"A", "B"};
    if (o.add_difference) step.operands.push_back("C");
    if (!o.unet_blocks.empty()) {
      std::vector<double> values = parse_blocks(o.unet_blocks);
      if (values.size() == kMergeBlockCount) {
        if (o.base_alpha)
          throw Error("--unet-blocks gives 26 values (BASE first) and --base-alpha gives BASE again");
        spec.base_alpha = values.front();
        values.erase(values.begin());
      }
      UNetBlockWeights weights{};
      std::copy(values.begin(), values.end(), weights.begin());
      spec.unet_blocks = weights;
      if (o.unet_alpha) throw Error("--unet-blocks and --unet-alpha both set the UNet's weights");
    }
    if (o.base_alpha) spec.base_alpha = o.base_alpha;
    spec.unet.alpha = o.unet_alpha;
    spec.text_encoder.alpha = o.text_encoder_alpha;
    spec.vae.alpha = o.vae_alpha;
    for (const auto& [c, from] : takes) {
      if (from->empty()) continue;
      auto it = std::find(step.operands.begin(), step.operands.end(), *from);
      if (it == step.operands.end()) it = step.operands.insert(step.operands.end(), *from);
      spec.component(c).from = static_cast<size_t>(it - step.operands.begin());
    }
    const std::optional<double>& amount = o.add_difference ? o.multiplier : o.alpha;
    if (amount)
      spec.alpha = *amount;
    else if (spec.uses_alpha())
      throw Error(o.add_difference ? "--add-difference needs --multiplier" : "a weighted sum needs --alpha");
  }
  for (size_t i = 0; i < o.inputs.size(); ++i)
    if (std::find(step.operands.begin(), step.operands.end(), kInputNames[i]) == step.operands.end())
      throw Error(
          fmt::format("input {} ({}) is not used: a weighted sum reads A and B, --add-difference A, B and "
                      "C, and --*-from the input it names",
                      kInputNames[i], o.inputs[i]));
  recipe.steps.push_back(std::move(step));
  validate(recipe);
  return recipe;
}

void run_merge(const MergeOptions& o) {
  require_output_folder(o.out);
  MergeRecipe recipe;
  if (!o.recipe.empty()) {
    if (!o.inputs.empty() || o.add_difference || o.alpha || o.multiplier || o.base_alpha || o.unet_alpha ||
        o.text_encoder_alpha || o.vae_alpha || !o.unet_blocks.empty() || !o.unet_from.empty() ||
        !o.text_encoder_from.empty() || !o.vae_from.empty())
      throw Error("--recipe names the inputs and steps itself: give no checkpoints or merge flags with it");
    recipe = read_merge_recipe(o.recipe);
  } else {
    recipe = recipe_from_flags(o);
  }
  MergeRunOptions run;
  if (!o.config.empty()) run.config = o.config;
  if (!o.dtype.empty()) run.dtype = parse_dtype(o.dtype);
  run.log = [](const std::string& line) { std::cout << line << "\n" << std::flush; };
  const Checkpoint merged = run_merge_recipe(recipe, run);
  write_checkpoint(merged, o.out, parse_layout(o.layout), run.dtype);
  size_t tensors = 0;
  for (auto c : {Component::UNet, Component::TextEncoder, Component::VAE})
    tensors += merged.component(c).size();
  std::cout << fmt::format("wrote {} ({}{}): {} tensors\n", o.out, o.layout,
                           o.dtype.empty() ? "" : ", " + o.dtype, tensors);
}

}  // namespace

void add_merge_command(CLI::App& app) {
  auto o = std::make_shared<MergeOptions>();
  auto* cmd =
      app.add_subcommand("merge", "Merge checkpoints (weighted sum, add difference, block weights, swaps)");
  cmd->add_option("INPUTS", o->inputs, "checkpoints A B [C]: .safetensors files or diffusers folders")
      ->expected(0, 3);
  cmd->add_option("--out,-o", o->out, "output .safetensors file (ldm) or folder (diffusers)")->required();
  cmd->add_option("--alpha", o->alpha, "weighted sum: B's share, (1 - alpha)*A + alpha*B");
  cmd->add_flag("--add-difference", o->add_difference, "A + multiplier*(B - C)");
  cmd->add_option("--multiplier", o->multiplier, "add difference: the multiplier");
  for (auto [flag, target] :
       {std::pair{"--unet-from", &o->unet_from}, std::pair{"--text-encoder-from", &o->text_encoder_from},
        std::pair{"--vae-from", &o->vae_from}})
    cmd->add_option(flag, *target, "copy this component from input A, B or C unchanged")
        ->check(CLI::IsMember({"A", "B", "C"}));
  cmd->add_option("--unet-blocks", o->unet_blocks,
                  "SuperMerger block weights: 25 comma-separated values IN00..IN11,M00,OUT00..OUT11 "
                  "(or 26 with BASE first)");
  cmd->add_option("--base-alpha", o->base_alpha, "alpha of the BASE block: text encoder and VAE");
  cmd->add_option("--unet-alpha", o->unet_alpha, "alpha (or multiplier) for the UNet only");
  cmd->add_option("--text-encoder-alpha", o->text_encoder_alpha,
                  "alpha (or multiplier) for the text encoder only");
  cmd->add_option("--vae-alpha", o->vae_alpha, "alpha (or multiplier) for the VAE only");
  cmd->add_option("--recipe", o->recipe, "TOML merge recipe: named inputs and chained steps");
  cmd->add_option("--config", o->config,
                  "diffusers model folder or component config.json (for non-SD-1.5 architectures)");
  cmd->add_option("--layout", o->layout, "output layout")
      ->check(CLI::IsMember({"ldm", "diffusers"}))
      ->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "output precision (default: A's; merges compute in fp32)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  cmd->callback([o] { run_merge(*o); });
}

}  // namespace kiln::cli
