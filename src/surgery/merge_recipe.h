// Merge recipes: a TOML file that names input checkpoints and chains merge steps, the last step
// being the output. The command-line merge (`kiln merge A B --alpha ...`) is a one-step recipe, so
// both run through run_merge_recipe and record themselves in the output's metadata the same way.
//
//   [inputs]
//   v1 = "models/v1.safetensors"              # paths relative to the recipe file
//   v4 = { path = "models/v4", config = "configs/v4" }
//   [[step]]
//   name = "mix"
//   weighted_sum = { a = "v4", b = "v1", alpha = 0.5 }
//   unet_blocks = [25 numbers]                # optional: SuperMerger IN00..OUT11 (26: BASE first)
//   base_alpha = 0.2                          # optional: text encoder and VAE (BASE)
//   text_encoder_alpha = 0.0                  # optional per component: also unet_alpha, vae_alpha
//   vae_from = "v4"                           # optional: a whole component copied from one name
//   [[step]]
//   name = "out"
//   add_difference = { a = "mix", b = "v2", c = "v1", multiplier = 1.0 }
//   # or: swap = { text_encoder = "v1", unet = "mix", vae = "v4" }
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "surgery/merge.h"

namespace kiln {

struct RecipeInput {
  std::string name;
  std::filesystem::path path;  // resolved: relative to the working directory or absolute
  std::optional<std::filesystem::path> config;
};

enum class RecipeStepKind { WeightedSum, AddDifference, Swap };

struct RecipeStep {
  std::string name;
  RecipeStepKind kind = RecipeStepKind::WeightedSum;
  // The names the step reads: a, b (and c) for merges, then names only a *_from uses; for a swap the
  // distinct sources. MergeSpec's ComponentMerge::from indexes this list.
  std::vector<std::string> operands;
  MergeSpec spec;
};

struct MergeRecipe {
  std::filesystem::path source;  // the recipe file; empty for a recipe built in code (the CLI's)
  std::string text;              // the file as written; empty: to_toml() describes the recipe instead
  std::vector<RecipeInput> inputs;
  std::vector<RecipeStep> steps;
};

// Reads and validates a recipe file. Invalid TOML, unknown keys, unknown names, a step using itself or
// a later step, duplicate names, inputs or steps nothing uses: kiln::Error naming the file.
MergeRecipe read_merge_recipe(const std::filesystem::path& path);
// The same from text; relative paths are taken relative to `source`'s folder.
MergeRecipe parse_merge_recipe(const std::string& text, const std::filesystem::path& source);

// The checks read_merge_recipe makes, for recipes built in code.
void validate(const MergeRecipe& recipe);

// The recipe as a recipe file (paths as stored).
std::string to_toml(const MergeRecipe& recipe);
// One line per step, e.g. "mix = weighted sum of v4 and v1, alpha 0.5".
std::string describe(const RecipeStep& step);

struct MergeRunOptions {
  std::optional<std::filesystem::path> config;  // for inputs without their own (non-SD-1.5 models)
  std::optional<torch::ScalarType> dtype;       // output dtype; default: see merge_graph
  std::function<void(const std::string&)> log;  // a line per step, when set
};

// Reads the inputs, runs the steps (merge_graph) and returns the last step's result with metadata:
// kiln.merge_recipe (the recipe text), kiln.merge_inputs (JSON: name -> {path, sha256 (A1111's
// 10-hex short hash)}), kiln.version, and A1111's sd_merge_models (JSON by full sha256) and, for a
// plain one-step weighted sum or add difference, sd_merge_recipe.
Checkpoint run_merge_recipe(const MergeRecipe& recipe, const MergeRunOptions& options = {});

// SHA-256 identifying an input: the file's, or for a diffusers folder the SHA-256 of the lines
// "<weights file> <sha256>" of its component weights (A1111 has no hash for folders).
std::string merge_input_sha256(const std::filesystem::path& path);

}  // namespace kiln
