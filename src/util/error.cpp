#include "util/error.h"

namespace kiln {

void throw_file_error(const std::filesystem::path& path, const std::string& problem) {
  throw Error(path.string() + ": " + problem);
}

}  // namespace kiln
