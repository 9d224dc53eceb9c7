#include "surgery/merge_recipe.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <toml++/toml.h>
#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "util/error.h"
#include "util/sha256.h"

namespace kiln {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr std::array<Component, 3> kParts = {Component::UNet, Component::TextEncoder, Component::VAE};

[[noreturn]] void fail(const fs::path& source, const std::string& problem) {
  if (source.empty()) throw Error("merge recipe: " + problem);
  throw_file_error(source, problem);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error(path, "cannot open the merge recipe");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string component_label(Component c) {
  std::string label(component_name(c));
  for (char& ch : label)
    if (ch == '_') ch = ' ';
  return label;
}

// Reads one [[step]] table. Names are checked later, against the whole recipe, by validate().
class StepReader {
 public:
  StepReader(const fs::path& source, size_t index)
      : source_(source), where_(fmt::format("step {}", index + 1)) {}

  RecipeStep read(const toml::table& table) {
    if (const auto* name = table.get("name")) {
      step_.name = string(*name, "name");
      where_ = fmt::format("step '{}'", step_.name);
    }
    const toml::node* operation = nullptr;
    std::string operation_key;
    std::map<Component, std::string> takes;
    for (const auto& [key_node, node] : table) {
      const std::string key(key_node.str());
      if (key == "name") continue;
      if (key == "weighted_sum" || key == "add_difference" || key == "swap") {
        if (operation)
          fail_here(fmt::format("has both '{}' and '{}'; a step does one thing", operation_key, key));
        operation = &node;
        operation_key = key;
      } else if (key == "unet_blocks") {
        blocks(node);
      } else if (key == "base_alpha") {
        set_base_alpha(number(node, key));
      } else if (auto c = component_of(key, "_alpha")) {
        step_.spec.component(*c).alpha = number(node, key);
      } else if (auto c = component_of(key, "_from")) {
        takes[*c] = string(node, key);
      } else {
        fail_here(
            fmt::format("unknown key '{}' (name, weighted_sum, add_difference, swap, unet_blocks, "
                        "base_alpha, unet_alpha, "
                        "text_encoder_alpha, vae_alpha, unet_from, text_encoder_from, vae_from)",
                        key));
      }
    }
    if (step_.name.empty()) fail_here("has no name (name = \"...\")");
    if (!operation) fail_here("needs one of weighted_sum, add_difference or swap");
    const auto* args = operation->as_table();
    if (!args)
      fail_here(fmt::format("'{}' must be a table, e.g. {} = {{ a = \"x\", b = \"y\", ... }}", operation_key,
                            operation_key));
    if (operation_key == "swap")
      swap(*args, takes);
    else
      merge(operation_key, *args, takes);
    return step_;
  }

 private:
  [[noreturn]] void fail_here(const std::string& problem) const {
    fail(source_, fmt::format("{}: {}", where_, problem));
  }

  std::string string(const toml::node& node, const std::string& key) const {
    auto value = node.value_exact<std::string>();
    if (!value || value->empty()) fail_here(fmt::format("'{}' must be a non-empty string", key));
    return *value;
  }

  double number(const toml::node& node, const std::string& key) const {
    auto value = node.value<double>();  // integers are numbers too
    if (!value || node.is_boolean()) fail_here(fmt::format("'{}' must be a number", key));
    return *value;
  }

  static std::optional<Component> component_of(const std::string& key, std::string_view suffix) {
    for (auto c : kParts)
      if (key == std::string(component_name(c)) + std::string(suffix)) return c;
    return std::nullopt;
  }

  void set_base_alpha(double value) {
    if (step_.spec.base_alpha)
      fail_here("gives BASE twice: as base_alpha and as the first of 26 unet_blocks values");
    step_.spec.base_alpha = value;
  }

  // SuperMerger writes 26 values with BASE first; MBW-style lists have the 25 UNet blocks only.
  void blocks(const toml::node& node) {
    const auto* array = node.as_array();
    if (!array || (array->size() != kUNetBlockWeightCount && array->size() != kMergeBlockCount))
      fail_here(
          "'unet_blocks' must be an array of 25 numbers (IN00..IN11, M00, OUT00..OUT11) or 26 with BASE "
          "first");
    std::vector<double> values;
    for (const auto& item : *array) values.push_back(number(item, "unet_blocks"));
    if (values.size() == kMergeBlockCount) {
      set_base_alpha(values.front());
      values.erase(values.begin());
    }
    UNetBlockWeights weights{};
    std::copy(values.begin(), values.end(), weights.begin());
    step_.spec.unet_blocks = weights;
  }

  void merge(const std::string& operation, const toml::table& args,
             const std::map<Component, std::string>& takes) {
    const bool sum = operation == "weighted_sum";
    step_.kind = sum ? RecipeStepKind::WeightedSum : RecipeStepKind::AddDifference;
    step_.spec.method = sum ? MergeMethod::WeightedSum : MergeMethod::AddDifference;
    const std::vector<std::string> roles =
        sum ? std::vector<std::string>{"a", "b"} : std::vector<std::string>{"a", "b", "c"};
    const std::string amount = sum ? "alpha" : "multiplier";
    std::optional<double> alpha;
    for (const auto& [key_node, node] : args) {
      const std::string key(key_node.str());
      if (key == amount)
        alpha = number(node, operation + "." + key);
      else if (std::find(roles.begin(), roles.end(), key) == roles.end())
        fail_here(
            fmt::format("unknown key '{}' in {} ({}, {})", key, operation, fmt::join(roles, ", "), amount));
    }
    for (const auto& role : roles) {
      const auto* node = args.get(role);
      if (!node)
        fail_here(fmt::format("{} needs '{}' (the name of an input or an earlier step)", operation, role));
      step_.operands.push_back(string(*node, operation + "." + role));
    }
    for (const auto& [c, name] : takes) step_.spec.component(c).from = operand_index(name);
    if (step_.spec.unet_blocks && step_.spec.unet.alpha)
      fail_here("gives both unet_blocks and unet_alpha; the block weights would override unet_alpha");
    if (alpha)
      step_.spec.alpha = *alpha;
    else if (step_.spec.uses_alpha())
      fail_here(fmt::format("{} needs '{}'", operation, amount));
  }

  void swap(const toml::table& args, const std::map<Component, std::string>& takes) {
    step_.kind = RecipeStepKind::Swap;
    const MergeSpec& spec = step_.spec;
    if (!takes.empty() || spec.unet_blocks || spec.base_alpha || spec.unet.alpha || spec.text_encoder.alpha ||
        spec.vae.alpha)
      fail_here("a swap copies whole components: it takes no alphas, block weights or *_from keys");
    for (const auto& [key_node, node] : args)
      if (!component_of(std::string(key_node.str()), ""))
        fail_here(fmt::format("unknown key '{}' in swap (unet, text_encoder, vae)", key_node.str()));
    for (auto c : kParts) {
      const auto* node = args.get(component_name(c));
      if (!node) fail_here(fmt::format("swap needs '{}' (the name to take it from)", component_name(c)));
      step_.spec.component(c).from = operand_index(string(*node, "swap." + std::string(component_name(c))));
    }
  }

  size_t operand_index(const std::string& name) {
    auto it = std::find(step_.operands.begin(), step_.operands.end(), name);
    if (it != step_.operands.end()) return static_cast<size_t>(it - step_.operands.begin());
    step_.operands.push_back(name);
    return step_.operands.size() - 1;
  }

  fs::path source_;
  std::string where_;
  RecipeStep step_;
};

std::string format_number(double value) { return fmt::format("{}", value); }

std::string blocks_text(const UNetBlockWeights& weights) {
  return fmt::format("[{}]", fmt::join(weights, ", "));
}

// A file's entry in A1111's sd_merge_models, keyed by its full SHA-256.
json a1111_model_entry(const RecipeInput& input, const Checkpoint& checkpoint) {
  fs::path name = input.path;
  if (name.filename().empty()) name = name.parent_path();  // "folder/" names the folder
  json entry = {{"name", name.filename().string()}, {"legacy_hash", nullptr}, {"sd_merge_recipe", nullptr}};
  if (fs::is_regular_file(input.path)) entry["legacy_hash"] = a1111_legacy_hash(input.path);
  if (auto it = checkpoint.metadata.find("sd_merge_recipe"); it != checkpoint.metadata.end())
    entry["sd_merge_recipe"] = json::parse(it->second, nullptr, false);
  if (entry["sd_merge_recipe"].is_discarded()) entry["sd_merge_recipe"] = nullptr;
  return entry;
}

// A1111's record of a plain merge, written only where it describes the result: one weighted sum or add
// difference of files, the same α everywhere.
std::optional<json> a1111_recipe(const MergeRecipe& recipe, const std::map<std::string, std::string>& shas,
                                 std::optional<torch::ScalarType> dtype) {
  if (recipe.steps.size() != 1) return std::nullopt;
  const RecipeStep& step = recipe.steps.front();
  const MergeSpec& spec = step.spec;
  if (step.kind == RecipeStepKind::Swap || spec.unet_blocks || spec.base_alpha) return std::nullopt;
  for (auto c : kParts)
    if (spec.component(c).alpha || spec.component(c).from) return std::nullopt;
  const bool sum = step.kind == RecipeStepKind::WeightedSum;
  return json{{"type", "kiln"},
              {"primary_model_hash", shas.at(step.operands[0])},
              {"secondary_model_hash", shas.at(step.operands[1])},
              {"tertiary_model_hash", sum ? json(nullptr) : json(shas.at(step.operands[2]))},
              {"interp_method", sum ? "Weighted sum" : "Add difference"},
              {"multiplier", spec.alpha},
              {"save_as_half", dtype == torch::kFloat16},
              {"bake_in_vae", "None"},
              {"discard_weights", ""},
              {"is_inpainting", false},
              {"is_instruct_pix2pix", false}};
}

Metadata merge_metadata(const MergeRecipe& recipe, const std::vector<Checkpoint>& loaded,
                        std::optional<torch::ScalarType> dtype) {
  json inputs = json::object(), models = json::object();
  std::map<std::string, std::string> shas;
  for (size_t i = 0; i < recipe.inputs.size(); ++i) {
    const RecipeInput& input = recipe.inputs[i];
    const std::string sha = merge_input_sha256(input.path);
    shas[input.name] = sha;
    inputs[input.name] = {{"path", input.path.string()}, {"sha256", sha.substr(0, 10)}};
    models[sha] = a1111_model_entry(input, loaded[i]);
    // As A1111 does, the inputs' own merge history travels along.
    if (auto it = loaded[i].metadata.find("sd_merge_models"); it != loaded[i].metadata.end()) {
      const json earlier = json::parse(it->second, nullptr, false);
      if (earlier.is_object()) models.update(earlier);
    }
  }
  Metadata metadata = {{"format", "pt"},
                       {"kiln.version", KILN_VERSION},
                       {"kiln.merge_recipe", recipe.text.empty() ? to_toml(recipe) : recipe.text},
                       {"kiln.merge_inputs", inputs.dump()},
                       {"sd_merge_models", models.dump()}};
  if (auto a1111 = a1111_recipe(recipe, shas, dtype)) metadata["sd_merge_recipe"] = a1111->dump();
  return metadata;
}

}  // namespace

MergeRecipe parse_merge_recipe(const std::string& text, const fs::path& source) {
  MergeRecipe recipe;
  recipe.source = source;
  recipe.text = text;
  toml::table doc;
  try {
    doc = toml::parse(text, source.string());
  } catch (const toml::parse_error& e) {
    fail(source, fmt::format("not valid TOML (line {}): {}", e.source().begin.line, e.description()));
  }
  // Paths in a recipe are relative to the recipe, so a recipe moves with the models it names.
  const fs::path base = source.parent_path();
  auto resolve = [&](const std::string& text_path) {
    const fs::path path = text_path;
    return path.is_relative() ? (base / path).lexically_normal() : path;
  };
  for (const auto& [key, node] : doc)
    if (key.str() != "inputs" && key.str() != "step")
      fail(source, fmt::format("unknown key '{}' (a recipe holds [inputs] and [[step]] tables)", key.str()));
  const auto* inputs = doc.get_as<toml::table>("inputs");
  if (!inputs) fail(source, "needs an [inputs] table naming the checkpoints (name = \"path\")");
  for (const auto& [key, node] : *inputs) {
    RecipeInput input{std::string(key.str()), {}, std::nullopt};
    const std::string where = "inputs." + input.name;
    if (auto path = node.value_exact<std::string>()) {
      input.path = resolve(*path);
    } else if (const auto* table = node.as_table()) {
      for (const auto& [field, value] : *table) {
        auto text_value = value.value_exact<std::string>();
        if (!text_value || (field.str() != "path" && field.str() != "config"))
          fail(source, fmt::format("{}: takes path = \"...\" and config = \"...\" only (not {})", where,
                                   field.str()));
        if (field.str() == "path")
          input.path = resolve(*text_value);
        else
          input.config = resolve(*text_value);
      }
    } else {
      fail(source, fmt::format("{} must be a path or {{ path = \"...\", config = \"...\" }}", where));
    }
    if (input.path.empty()) fail(source, where + " has no path");
    recipe.inputs.push_back(std::move(input));
  }
  // TOML tables do not keep their order; the file's order is the one its author reads.
  std::vector<std::pair<toml::source_position, size_t>> order;
  for (size_t i = 0; i < recipe.inputs.size(); ++i)
    order.emplace_back(inputs->get(recipe.inputs[i].name)->source().begin, i);
  std::sort(order.begin(), order.end(), [](const auto& x, const auto& y) {
    return std::tie(x.first.line, x.first.column) < std::tie(y.first.line, y.first.column);
  });
  std::vector<RecipeInput> in_file_order;
  for (const auto& [position, i] : order) in_file_order.push_back(recipe.inputs[i]);
  recipe.inputs = std::move(in_file_order);
  const auto* steps = doc.get("step");
  if (!steps) fail(source, "has no [[step]]; the last step is the output");
  const auto* array = steps->as_array();
  if (!array || !array->is_array_of_tables()) fail(source, "'step' must be [[step]] tables");
  for (size_t i = 0; i < array->size(); ++i)
    recipe.steps.push_back(StepReader(source, i).read(*(*array)[i].as_table()));
  validate(recipe);
  return recipe;
}

MergeRecipe read_merge_recipe(const fs::path& path) { return parse_merge_recipe(read_text(path), path); }

void validate(const MergeRecipe& recipe) {
  const fs::path& source = recipe.source;
  if (recipe.inputs.empty()) fail(source, "[inputs] names no checkpoint");
  if (recipe.steps.empty()) fail(source, "has no [[step]]; the last step is the output");
  std::map<std::string, size_t> defined;  // name -> node (inputs first, then steps)
  std::vector<std::string> names;
  for (const auto& input : recipe.inputs) {
    if (input.name.empty() || !defined.emplace(input.name, names.size()).second)
      fail(source, fmt::format("input name '{}' is empty or used twice", input.name));
    names.push_back("input '" + input.name + "'");
  }
  std::vector<bool> used(recipe.inputs.size() + recipe.steps.size(), false);
  for (size_t s = 0; s < recipe.steps.size(); ++s) {
    const RecipeStep& step = recipe.steps[s];
    const std::string where = fmt::format("step '{}'", step.name);
    if (step.name.empty()) fail(source, fmt::format("step {} has no name", s + 1));
    if (defined.count(step.name))
      fail(source, fmt::format("{}: the name is already used by {}", where, names[defined.at(step.name)]));
    for (const auto& operand : step.operands) {
      if (operand == step.name) fail(source, fmt::format("{} uses itself", where));
      auto it = defined.find(operand);
      if (it == defined.end()) {
        for (size_t later = s + 1; later < recipe.steps.size(); ++later)
          if (recipe.steps[later].name == operand)
            fail(source,
                 fmt::format("{} uses step '{}', which comes later (a step may use the inputs and earlier "
                             "steps only)",
                             where, operand));
        std::vector<std::string> known;
        for (const auto& [name, node] : defined) known.push_back(name);
        fail(source,
             fmt::format("{}: unknown name '{}' (known here: {})", where, operand, fmt::join(known, ", ")));
      }
      used[it->second] = true;
    }
    const size_t needed = step.kind == RecipeStepKind::AddDifference ? 3
                          : step.kind == RecipeStepKind::WeightedSum ? 2
                                                                     : 1;
    if (step.operands.size() < needed) fail(source, fmt::format("{} needs {} operands", where, needed));
    for (auto c : kParts) {
      const auto& from = step.spec.component(c).from;
      if (from && *from >= step.operands.size())
        fail(source, fmt::format("{}: {} is taken from operand {} of {}", where, component_name(c), *from,
                                 step.operands.size()));
      if (step.kind == RecipeStepKind::Swap && !from)
        fail(source, fmt::format("{}: a swap must name where {} comes from", where, component_name(c)));
    }
    defined.emplace(step.name, names.size());
    names.push_back(where);
  }
  // Everything named should reach the output: an unused input or step is almost always a typo in a name.
  for (size_t node = 0; node + 1 < used.size(); ++node)
    if (!used[node])
      fail(source, fmt::format("{} is not used by any step (only the last step is written)", names[node]));
}

std::string to_toml(const MergeRecipe& recipe) {
  toml::table doc;
  toml::table inputs;
  for (const auto& input : recipe.inputs) {
    if (input.config) {
      toml::table entry{{"path", input.path.string()}, {"config", input.config->string()}};
      entry.is_inline(true);
      inputs.insert(input.name, std::move(entry));
    } else {
      inputs.insert(input.name, input.path.string());
    }
  }
  doc.insert("inputs", std::move(inputs));
  toml::array steps;
  for (const auto& step : recipe.steps) {
    const MergeSpec& spec = step.spec;
    toml::table t{{"name", step.name}};
    toml::table operation;
    if (step.kind == RecipeStepKind::Swap) {
      for (auto c : kParts) operation.insert(component_name(c), step.operands[*spec.component(c).from]);
    } else {
      const bool sum = step.kind == RecipeStepKind::WeightedSum;
      operation.insert("a", step.operands[0]);
      operation.insert("b", step.operands[1]);
      if (!sum) operation.insert("c", step.operands[2]);
      if (spec.uses_alpha()) operation.insert(sum ? "alpha" : "multiplier", spec.alpha);
      if (spec.unet_blocks) {
        toml::array blocks;
        for (double w : *spec.unet_blocks) blocks.push_back(w);
        t.insert("unet_blocks", std::move(blocks));
      }
      if (spec.base_alpha) t.insert("base_alpha", *spec.base_alpha);
      for (auto c : kParts) {
        const ComponentMerge& own = spec.component(c);
        if (own.alpha) t.insert(std::string(component_name(c)) + "_alpha", *own.alpha);
        if (own.from) t.insert(std::string(component_name(c)) + "_from", step.operands[*own.from]);
      }
    }
    operation.is_inline(true);
    t.insert(step.kind == RecipeStepKind::Swap          ? "swap"
             : step.kind == RecipeStepKind::WeightedSum ? "weighted_sum"
                                                        : "add_difference",
             std::move(operation));
    steps.push_back(std::move(t));
  }
  doc.insert("step", std::move(steps));
  std::ostringstream out;
  out << doc << "\n";
  return out.str();
}

std::string describe(const RecipeStep& step) {
  const MergeSpec& spec = step.spec;
  std::string text = step.name + " = ";
  if (step.kind == RecipeStepKind::Swap) {
    std::vector<std::string> parts;
    for (auto c : kParts)
      parts.push_back(fmt::format("{} from {}", component_label(c), step.operands[*spec.component(c).from]));
    return text + fmt::format("{}", fmt::join(parts, ", "));
  }
  if (step.kind == RecipeStepKind::WeightedSum)
    text += fmt::format("weighted sum of {} and {}", step.operands[0], step.operands[1]);
  else
    text += fmt::format("{} + multiplier × ({} − {})", step.operands[0], step.operands[1], step.operands[2]);
  if (spec.uses_alpha())
    text += fmt::format(", {} {}", step.kind == RecipeStepKind::WeightedSum ? "alpha" : "multiplier",
                        format_number(spec.alpha));
  if (spec.unet_blocks) text += fmt::format("; unet block weights {}", blocks_text(*spec.unet_blocks));
  if (spec.base_alpha) text += fmt::format("; base alpha {}", format_number(*spec.base_alpha));
  for (auto c : kParts) {
    const ComponentMerge& own = spec.component(c);
    if (own.alpha) text += fmt::format("; {} alpha {}", component_label(c), format_number(*own.alpha));
    if (own.from) text += fmt::format("; {} from {}", component_label(c), step.operands[*own.from]);
  }
  return text;
}

Checkpoint run_merge_recipe(const MergeRecipe& recipe, const MergeRunOptions& options) {
  validate(recipe);
  std::vector<Checkpoint> loaded;
  loaded.reserve(recipe.inputs.size());
  std::map<std::string, size_t> node_of;
  for (const auto& input : recipe.inputs) {
    node_of[input.name] = loaded.size();
    loaded.push_back(read_checkpoint(input.path, input.config ? input.config : options.config));
  }
  std::vector<MergeStep> steps;
  for (const auto& step : recipe.steps) {
    MergeStep node{step.name, step.spec, {}};
    for (const auto& operand : step.operands) node.operands.push_back(node_of.at(operand));
    node_of[step.name] = loaded.size() + steps.size();
    steps.push_back(std::move(node));
    if (options.log) options.log(describe(step));
  }
  std::vector<const Checkpoint*> inputs;
  for (const auto& checkpoint : loaded) inputs.push_back(&checkpoint);
  Checkpoint out = merge_graph(inputs, steps, options.dtype);
  out.metadata = merge_metadata(recipe, loaded, options.dtype);
  return out;
}

std::string merge_input_sha256(const fs::path& path) {
  if (!fs::is_directory(path)) return sha256_file(path);
  std::string lines;
  for (auto c : kParts) {
    fs::path weights = diffusers_weights_file(c);
    if (!fs::exists(path / weights)) weights.replace_extension(".fp16.safetensors");
    if (fs::exists(path / weights))
      lines += weights.generic_string() + " " + sha256_file(path / weights) + "\n";
  }
  return sha256_bytes(lines);
}

}  // namespace kiln
