// Writes that never leave a half-written file behind: data goes to "<name>.tmp-<pid>" in the
// same directory, is flushed, then renamed over the target in one step.
#pragma once
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string_view>

namespace kiln {

// Calls `write(file)` on a temporary file beside `target`, fsyncs and renames it to `target`.
// If `write` throws, the temporary is removed and the exception propagates; `target` is untouched.
void write_file_atomically(const std::filesystem::path& target, const std::function<void(std::FILE*)>& write);

// Convenience for small text files (config.json, reports).
void write_text_atomically(const std::filesystem::path& target, std::string_view text);

// Replaces a whole directory the same way: build it in `build(tmp_dir)`, then rename into place.
// An existing `target` is moved aside and deleted only after the rename succeeded.
void write_directory_atomically(const std::filesystem::path& target,
                                const std::function<void(const std::filesystem::path&)>& build);

// Before long work that ends in writing `target` (a file, or a folder written whole): throws
// kiln::Error naming the folder `target` would go into when that folder does not exist, so a typo
// fails in a second instead of after the work (and never names an internal temporary).
void require_output_folder(const std::filesystem::path& target);

// Deletes the temporaries ("<name>.tmp-<pid>", files or folders) in `dir` whose writing process is
// gone (killed mid-write: atomic writes never leave anything else behind). Returns how many went.
int remove_stale_temporaries(const std::filesystem::path& dir);

}  // namespace kiln
