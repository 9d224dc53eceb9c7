// Crash-safe file and directory replacement: write beside the target, fsync, then rename.
#include "util/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::strerror(errno); }

// "<target>.<tag>-<pid>" in the target's own directory, so the final rename never crosses filesystems.
fs::path sibling_path(const fs::path& target, const char* tag) {
  if (target.filename().empty()) throw_file_error(target, "not a file name (ends in a separator)");
  fs::path name = target.filename();
  name += std::string(".") + tag + "-" + std::to_string(::getpid());
  return target.parent_path() / name;
}

// Without fsyncing the directory, a crash right after rename() can lose the new entry.
void fsync_directory(const fs::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some filesystems refuse to open directories
  ::fsync(fd);
  ::close(fd);
}

// Flushes every regular file and directory below `root` so that the later rename publishes complete data.
void fsync_tree(const fs::path& root) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec) && !it->is_directory(ec)) continue;
    int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fsync(fd);
    ::close(fd);
  }
  fsync_directory(root);
}

}  // namespace

void write_file_atomically(const fs::path& target, const std::function<void(std::FILE*)>& write) {
  const fs::path tmp = sibling_path(target, "tmp");
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw_file_error(target, "cannot create temporary file " + tmp.string() + ": " + errno_text());
  try {
    write(f);
    if (std::fflush(f) != 0 || std::ferror(f)) throw_file_error(target, "write failed: " + errno_text());
    if (::fsync(::fileno(f)) != 0) throw_file_error(target, "fsync failed: " + errno_text());
    std::FILE* closing = f;
    f = nullptr;
    if (std::fclose(closing) != 0) throw_file_error(target, "close failed: " + errno_text());
    if (std::rename(tmp.c_str(), target.c_str()) != 0)
      throw_file_error(target, "cannot rename " + tmp.string() + " into place: " + errno_text());
  } catch (...) {
    if (f) std::fclose(f);
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  fsync_directory(target.parent_path());
}

int remove_stale_temporaries(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const auto name = entry.path().filename().string();
    const auto at = name.rfind(".tmp-");
    if (at == std::string::npos) continue;
    const auto digits = name.substr(at + 5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9)
      continue;
    const auto pid = static_cast<pid_t>(std::stol(digits));
    // kill(pid, 0) fails with ESRCH only when no such process exists.
    if (pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(entry.path());
  }
  for (const auto& path : stale) fs::remove_all(path, ec);
  return static_cast<int>(stale.size());
}

void write_text_atomically(const fs::path& target, std::string_view text) {
  write_file_atomically(target, [&](std::FILE* f) {
    if (!text.empty() && std::fwrite(text.data(), 1, text.size(), f) != text.size())
      throw_file_error(target, "write failed: " + errno_text());
  });
}

void write_directory_atomically(const fs::path& target, const std::function<void(const fs::path&)>& build) {
  const fs::path tmp = sibling_path(target, "tmp");
  const fs::path old = sibling_path(target, "old");
  std::error_code ec;
  fs::remove_all(tmp, ec);  // left over from a crashed run that had the same pid
  if (!fs::create_directory(tmp, ec) || ec)
    throw_file_error(target, "cannot create temporary directory " + tmp.string() + ": " + ec.message());
  try {
    build(tmp);
    fsync_tree(tmp);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }

  const bool had_target = fs::exists(fs::symlink_status(target));
  if (had_target) {
    fs::remove_all(old, ec);
    if (std::rename(target.c_str(), old.c_str()) != 0) {
      const std::string why = errno_text();
      fs::remove_all(tmp, ec);
      throw_file_error(target, "cannot move the existing directory aside to " + old.string() + ": " + why);
    }
  }
  if (std::rename(tmp.c_str(), target.c_str()) != 0) {
    const std::string why = errno_text();
    if (had_target) std::rename(old.c_str(), target.c_str());  // put the previous version back
    fs::remove_all(tmp, ec);
    throw_file_error(target, "cannot rename " + tmp.string() + " into place: " + why);
  }
  fsync_directory(target.parent_path());
  if (had_target) fs::remove_all(old, ec);
}

void require_output_folder(const std::filesystem::path& target) {
  const auto folder = std::filesystem::absolute(target).parent_path();
  if (!std::filesystem::is_directory(folder))
    throw_file_error(target, "cannot be written: the folder " + folder.string() + " does not exist");
}

}  // namespace kiln
