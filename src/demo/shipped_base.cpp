#include "demo/shipped_base.h"

namespace kiln {

namespace fs = std::filesystem;

std::vector<fs::path> shipped_base_candidates(const fs::path& executable, const std::optional<fs::path>& data_dir,
                                              const fs::path& source_dir) {
  std::vector<fs::path> out;
  if (data_dir && !data_dir->empty()) out.push_back(*data_dir / "demo-base");
  if (!executable.empty()) {
    const fs::path bin = executable.parent_path();
    out.push_back((bin / ".." / "share" / "kiln" / "demo-base").lexically_normal());
    out.push_back((bin / ".." / "assets" / "demo-base").lexically_normal());
  }
  if (!source_dir.empty()) out.push_back(source_dir / "assets" / "demo-base");
  return out;
}

std::optional<fs::path> find_shipped_base(const std::vector<fs::path>& candidates) {
  for (const auto& candidate : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(candidate / "model_index.json", ec)) return candidate;
  }
  return std::nullopt;
}

fs::path current_executable() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : self;
}

}  // namespace kiln
