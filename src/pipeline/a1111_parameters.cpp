#include "pipeline/a1111_parameters.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <sstream>
#include <vector>

namespace kiln {

std::string a1111_sampler_name(const std::string& sampler) {
  static const std::map<std::string, std::string> names{
      {"ddim", "DDIM"}, {"euler", "Euler"},       {"euler_a", "Euler a"},
      {"heun", "Heun"}, {"dpmpp_2m", "DPM++ 2M"}, {"dpmpp_2m_karras", "DPM++ 2M Karras"}};
  const auto it = names.find(sampler);
  return it == names.end() ? sampler : it->second;
}

namespace {

// A1111 quotes a value holding a comma, colon or quote as a JSON string.
std::string quote(const std::string& value) {
  if (value.find_first_of(",:\"\n") == std::string::npos) return value;
  return nlohmann::json(value).dump();
}

// Python's str() of a float for the values A1111 shows: 7 -> "7", 7.5 -> "7.5".
std::string number(double value) { return fmt::format("{}", value); }

}  // namespace

std::string format_a1111_parameters(const GenerationSettings& s, uint64_t seed, const ModelIdentity& model) {
  std::vector<std::pair<std::string, std::string>> fields{
      {"Steps", std::to_string(s.steps)},
      {"Sampler", a1111_sampler_name(s.sampler)},
      {"CFG scale", number(s.cfg)},
      {"Seed", std::to_string(seed)},
      {"Size", fmt::format("{}x{}", s.width, s.height)},
  };
  if (s.karras && s.sampler.find("karras") == std::string::npos)
    fields.emplace_back("Schedule type", "Karras");
  if (!model.short_hash.empty()) fields.emplace_back("Model hash", model.short_hash);
  if (!model.name.empty()) fields.emplace_back("Model", model.name);
  if (s.clip_skip > 1) fields.emplace_back("Clip skip", std::to_string(s.clip_skip));
  if (!s.spacing.empty()) fields.emplace_back("Timestep spacing", s.spacing);
  fields.emplace_back("Version", "kiln " KILN_VERSION);

  std::string text = s.prompt;
  if (!s.negative.empty()) text += "\nNegative prompt: " + s.negative;
  text += "\n";
  for (size_t i = 0; i < fields.size(); ++i)
    text += (i ? ", " : "") + fields[i].first + ": " + quote(fields[i].second);
  return text;
}

std::map<std::string, std::string> parse_a1111_parameters(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::map<std::string, std::string> out;
  if (lines.empty()) return out;
  const std::string settings = lines.back();
  lines.pop_back();
  std::string prompt, negative;
  bool in_negative = false;
  for (const auto& line : lines) {
    if (line.rfind("Negative prompt:", 0) == 0) {
      in_negative = true;
      negative = line.substr(16);
      if (!negative.empty() && negative[0] == ' ') negative.erase(0, 1);
    } else if (in_negative) {
      negative += "\n" + line;
    } else {
      prompt += (prompt.empty() ? "" : "\n") + line;
    }
  }
  out["Prompt"] = prompt;
  out["Negative prompt"] = negative;
  // "Key: value" pairs separated by ", "; a value may be a JSON-quoted string.
  size_t at = 0;
  while (at < settings.size()) {
    const auto colon = settings.find(": ", at);
    if (colon == std::string::npos) break;
    const auto key = settings.substr(at, colon - at);
    size_t value_start = colon + 2, value_end;
    std::string value;
    if (value_start < settings.size() && settings[value_start] == '"') {
      value_end = value_start + 1;
      while (value_end < settings.size() && settings[value_end] != '"')
        value_end += settings[value_end] == '\\' ? 2 : 1;
      value =
          nlohmann::json::parse(settings.substr(value_start, value_end + 1 - value_start)).get<std::string>();
      ++value_end;
    } else {
      value_end = settings.find(", ", value_start);
      if (value_end == std::string::npos) value_end = settings.size();
      value = settings.substr(value_start, value_end - value_start);
    }
    out[key] = value;
    at = value_end == settings.size() ? value_end : value_end + 2;
  }
  return out;
}

}  // namespace kiln
