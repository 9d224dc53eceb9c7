// Where kiln finds the demo base it ships (assets/demo-base in the source tree, share/kiln/demo-base
// once installed), wherever the binary was built, installed or moved to.
#pragma once
#include <filesystem>
#include <optional>
#include <vector>

namespace kiln {

// The folders to look in, first match wins: $KILN_DATA_DIR/demo-base (when `data_dir` is given);
// <executable's folder>/../share/kiln/demo-base (an installed kiln, its prefix moved or not);
// <executable's folder>/../assets/demo-base (a build folder inside the source tree); and the source
// tree the binary was built from (`source_dir`/assets/demo-base).
std::vector<std::filesystem::path> shipped_base_candidates(const std::filesystem::path& executable,
                                                           const std::optional<std::filesystem::path>& data_dir,
                                                           const std::filesystem::path& source_dir);

// The first candidate that holds a diffusers folder (model_index.json), or nullopt.
std::optional<std::filesystem::path> find_shipped_base(const std::vector<std::filesystem::path>& candidates);

// This process's executable (/proc/self/exe), or an empty path where that cannot be read.
std::filesystem::path current_executable();

}  // namespace kiln
