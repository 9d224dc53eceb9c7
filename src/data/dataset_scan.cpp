#include "data/dataset_scan.h"

#include <fmt/format.h>

#include <algorithm>
#include <ostream>
#include <set>

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
  if (files.empty()) throw_file_error(folder.path, "no image files (JPEG, PNG, WebP, BMP, TIFF) in the folder");
  std::sort(files.begin(), files.end(),
            [](const auto& a, const auto& b) { return a.filename().string() < b.filename().string(); });
  return files;
}

// "a, b, c" for the first few names, "and N more" for the rest: a console line, not a listing.
std::string few_names(const std::vector<std::string>& names) {
  constexpr size_t kShown = 8;
  std::string out;
  for (size_t i = 0; i < std::min(names.size(), kShown); ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kShown) out += fmt::format(" and {} more", names.size() - kShown);
  return out;
}

// Says which entries of the folder training will not see: files that are neither a picture kiln
// reads nor a sidecar of one (same stem), and sub-folders (never searched). A .tif skipped without
// a word, or a picture one level too deep, is a dataset silently smaller than its owner thinks.
void note_unused(const std::filesystem::path& folder, const std::vector<std::filesystem::path>& pictures,
                 std::ostream& warnings) {
  std::set<std::string> stems;
  for (const auto& picture : pictures) stems.insert(picture.stem().string());
  std::vector<std::string> files, folders;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const std::string name = entry.path().filename().string();
    std::error_code ec;
    if (entry.is_directory(ec))
      folders.push_back(name);
    else if (!is_image_file(entry.path()) && !stems.count(entry.path().stem().string()))
      files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  std::sort(folders.begin(), folders.end());
  if (!files.empty())
    warnings << fmt::format("note: {}: {} file{} not used (neither a picture kiln reads nor its caption): {}\n",
                            folder.string(), files.size(), files.size() == 1 ? "" : "s", few_names(files));
  if (!folders.empty())
    warnings << fmt::format("note: {}: {} sub-folder{} not read (list a folder in data.folders to train on it): {}\n",
                            folder.string(), folders.size(), folders.size() == 1 ? "" : "s", few_names(folders));
}

}  // namespace

std::vector<DataItem> scan_folders(const std::vector<FolderSpec>& folders, bool skip_bad_files,
                                   std::ostream& warnings) {
  std::vector<DataItem> items;
  for (const auto& folder : folders) {
    const auto pictures = image_files(folder);
    note_unused(folder.path, pictures, warnings);
    for (const auto& file : pictures) {
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
