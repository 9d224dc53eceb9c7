#include "pipeline/prompt_file.h"

#include <fmt/format.h>

#include <functional>

#include <toml++/toml.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/error.h"

namespace kiln {

namespace {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error(path, "cannot open the prompts file");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// One entry's overrides of the defaults. TOML entries are converted to JSON first so that both
// formats go through this one table of keys.
GenerationSettings apply_entry(GenerationSettings s, const nlohmann::json& entry,
                               const std::function<void(const std::string&)>& fail) {
  if (entry.is_string()) {
    s.prompt = entry.get<std::string>();
    return s;
  }
  if (!entry.is_object()) fail("expected a string or a table of settings");
  for (const auto& [key, value] : entry.items()) {
    try {
      if (key == "prompt" || key == "text")
        s.prompt = value.get<std::string>();
      else if (key == "negative" || key == "negative_prompt")
        s.negative = value.get<std::string>();
      else if (key == "sampler")
        s.sampler = value.get<std::string>();
      else if (key == "spacing")
        s.spacing = value.get<std::string>();
      else if (key == "karras")
        s.karras = value.get<bool>();
      else if (key == "seed")
        s.seed = value.get<uint64_t>();
      else if (key == "cfg" || key == "cfg_scale")
        s.cfg = value.get<double>();
      else if (key == "steps")
        s.steps = value.get<int64_t>();
      else if (key == "width")
        s.width = value.get<int64_t>();
      else if (key == "height")
        s.height = value.get<int64_t>();
      else if (key == "clip_skip")
        s.clip_skip = value.get<int64_t>();
      else if (key == "batch")
        s.batch = value.get<int64_t>();
      else
        fail(
            fmt::format("unknown key '{}' (prompt, negative, sampler, spacing, karras, seed, cfg, steps, "
                        "width, height, clip_skip, batch)",
                        key));
    } catch (const nlohmann::json::exception&) {
      fail(fmt::format("'{}' has the wrong type ({})", key, value.dump()));
    }
  }
  if (s.prompt.empty() && !entry.contains("prompt") && !entry.contains("text")) fail("has no 'prompt'");
  return s;
}

nlohmann::json entries_from_json(const std::filesystem::path& path) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::parse_error& e) {
    throw_file_error(path, std::string("not valid JSON: ") + e.what());
  }
  if (doc.is_object() && doc.contains("prompts")) doc = doc["prompts"];
  if (!doc.is_array()) throw_file_error(path, "expected a JSON array of prompts (or {\"prompts\": [...]})");
  return doc;
}

nlohmann::json entries_from_toml(const std::filesystem::path& path) {
  toml::table doc;
  try {
    doc = toml::parse(read_text(path), path.string());
  } catch (const toml::parse_error& e) {
    throw_file_error(path,
                     fmt::format("not valid TOML (line {}): {}", e.source().begin.line, e.description()));
  }
  const auto* entries = doc["prompt"].as_array();
  if (!entries) throw_file_error(path, "expected [[prompt]] tables");
  std::ostringstream json;
  json << toml::json_formatter{*entries};
  return nlohmann::json::parse(json.str());
}

std::vector<GenerationSettings> from_text(const std::filesystem::path& path,
                                          const GenerationSettings& defaults) {
  std::vector<GenerationSettings> out;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    out.push_back(defaults);
    out.back().prompt = line;
  }
  return out;
}

}  // namespace

std::vector<GenerationSettings> read_prompt_file(const std::filesystem::path& path,
                                                 const GenerationSettings& defaults) {
  const auto extension = path.extension().string();
  std::vector<GenerationSettings> prompts;
  if (extension == ".json" || extension == ".toml") {
    const auto entries = extension == ".json" ? entries_from_json(path) : entries_from_toml(path);
    for (size_t i = 0; i < entries.size(); ++i) {
      auto fail = [&](const std::string& problem) {
        throw_file_error(path, fmt::format("entry {}: {}", i + 1, problem));
      };
      prompts.push_back(apply_entry(defaults, entries[i], fail));
    }
  } else {
    prompts = from_text(path, defaults);
  }
  if (prompts.empty()) throw_file_error(path, "holds no prompts");
  for (size_t i = 0; i < prompts.size(); ++i) {
    try {
      validate(prompts[i]);
    } catch (const Error& e) {
      throw_file_error(path, fmt::format("prompt {}: {}", i + 1, e.what()));
    }
  }
  return prompts;
}

}  // namespace kiln
