// Many prompts at once for `kiln sample --prompts FILE`: one prompt per line (.txt), or a JSON array
// / TOML [[prompt]] tables whose entries may set their own seed, cfg, steps, size, sampler,
// negative, clip_skip and batch over the command line's defaults.
#pragma once
#include <filesystem>
#include <vector>

#include "pipeline/generation_settings.h"

namespace kiln {

// .txt: blank lines and lines starting with '#' are skipped. .json: an array of strings or objects,
// or an object with a "prompts" array. .toml: [[prompt]] tables (key `text` or `prompt`).
// Unknown keys, wrong types and an empty list are errors naming the file (and the entry).
std::vector<GenerationSettings> read_prompt_file(const std::filesystem::path& path,
                                                 const GenerationSettings& defaults);

}  // namespace kiln
