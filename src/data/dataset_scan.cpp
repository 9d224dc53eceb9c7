#include "data/dataset_scan.h"

#include <algorithm>
#include <ostream>

#include "data/captions.h"
#include "data/image_file.h"
#include "util/error.h"

namespace kiln {

namespace {

std::vector<std::filesystem::path> image_files(const FolderSpec& folder) {
  if (folder.repeats < 1)
    throw_file_error(folder.path, "repeats must be at least 1, got " + std::to_string(folder.repeats));
  std::error_code ec;
  if (!std::filesystem::is_directory(folder.path, ec)) throw_file_error(folder.path, "no such folder");
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(folder.path)) {
    std::error_code type_ec;
    if (entry.is_regular_file(type_ec) && is_image_file(entry.path())) files.push_back(entry.path());
  }
  if (files.empty()) throw_file_error(folder.path, "no image files (JPEG, PNG, WebP, BMP) in the folder");
  std::sort(files.begin(), files.end(),
            [](const auto& a, const auto& b) { return a.filename().string() < b.filename().string(); });
  return files;
}

}  // namespace

std::vector<DataItem> scan_folders(const std::vector<FolderSpec>& folders, bool skip_bad_files,
                                   std::ostream& warnings) {
  std::vector<DataItem> items;
  for (const auto& folder : folders) {
    for (const auto& file : image_files(folder)) {
      DataItem item;
      item.image = file;
      try {
        const Image image = load_image(file);
        item.width = image.width;
        item.height = image.height;
        item.caption = read_caption(file);
      } catch (const Error& e) {
        if (!skip_bad_files) throw;
        warnings << "warning: skipped " << e.what() << '\n';
        continue;
      }
      items.insert(items.end(), static_cast<std::size_t>(folder.repeats), item);
    }
  }
  return items;
}

}  // namespace kiln
