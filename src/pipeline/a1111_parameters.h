// The generation settings as AUTOMATIC1111 writes them into a PNG's "parameters" text chunk, so
// its PNG-info tab (and ComfyUI, civitai, ...) read kiln's images:
//   <prompt>
//   Negative prompt: <negative>            (only when there is one)
//   Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: ..., ...
#pragma once
#include <map>
#include <string>

#include "pipeline/generation_settings.h"

namespace kiln {

// A1111's display name of a kiln sampler ("euler_a" -> "Euler a"); the kiln name when it has none.
std::string a1111_sampler_name(const std::string& sampler);

struct ModelIdentity {
  std::string name;        // A1111 shows the file name without extension
  std::string short_hash;  // first 10 hex chars of the file's SHA-256; empty for a folder
};

// `seed` is the image's own seed (settings.seed + its index in the batch).
std::string format_a1111_parameters(const GenerationSettings& settings, uint64_t seed,
                                    const ModelIdentity& model);

// The reverse, as A1111's parse_generation_parameters: "Prompt", "Negative prompt" and each
// "Key: value" of the last line (quoted values unquoted).
std::map<std::string, std::string> parse_a1111_parameters(const std::string& text);

}  // namespace kiln
