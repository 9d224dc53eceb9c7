// The list of training examples: kohya-style folders of pictures with sidecar captions, each
// folder repeated a number of times per epoch so small concepts are not drowned by large ones.
#pragma once
#include <filesystem>
#include <iosfwd>
#include <string>
#include <vector>

namespace kiln {

struct FolderSpec {
  std::filesystem::path path;
  int repeats = 1;  // times each picture of the folder appears in one epoch
};

struct DataItem {
  std::filesystem::path image;
  std::string caption;        // as read_caption returns it, before process_caption
  int width = 0, height = 0;  // upright size (EXIF orientation applied), for bucketing
};

// Every image file (is_image_file) directly inside each folder, not recursing, in file-name order
// so runs are reproducible; folders in the order given. An item is listed `repeats` times in a
// row. Each picture is decoded once here, so a broken file fails the scan rather than a training
// step hours later: a bad image or caption throws its kiln::Error, or, with skip_bad_files, writes
// "warning: skipped <file>: <problem>" as one line to `warnings` and leaves the item out.
// Files that are neither pictures nor captions, and sub-folders, are named in one "note:" line each
// per folder. Throws kiln::Error naming the folder when it is missing, holds no image files, or
// repeats < 1.
std::vector<DataItem> scan_folders(const std::vector<FolderSpec>& folders, bool skip_bad_files,
                                   std::ostream& warnings);

}  // namespace kiln
