// Training metrics, written twice per step: one JSON object per line in metrics.jsonl (for kiln's
// own tools and scripts) and TensorBoard scalars (for watching a run live).
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "logging/tensorboard.h"

namespace kiln {

class MetricsLog {
 public:
  // Appends to run_dir/metrics.jsonl so a resumed run continues the same file; TensorBoard events go
  // to a new event file under run_dir/tensorboard/. Creates run_dir if needed.
  explicit MetricsLog(const std::filesystem::path& run_dir, bool tensorboard = true);

  // One line {"step":..,"epoch":..,"time":<unix seconds>, "<tag>":value, ...} ("epoch" only when
  // given), flushed at once. JSON has no NaN or infinity: such values become null in the JSONL
  // file, while TensorBoard gets them as they are. The tags "step", "epoch" and "time" are reserved.
  void log(int64_t step, const std::map<std::string, double>& values, std::optional<int64_t> epoch = {});

  const std::filesystem::path& jsonl_path() const { return jsonl_path_; }
  // Null when constructed without TensorBoard output.
  const TensorBoardWriter* tensorboard() const { return tensorboard_ ? &*tensorboard_ : nullptr; }

 private:
  struct FileCloser {
    void operator()(std::FILE* f) const;
  };

  std::filesystem::path jsonl_path_;
  std::unique_ptr<std::FILE, FileCloser> jsonl_;
  std::optional<TensorBoardWriter> tensorboard_;
};

// Every line of a metrics.jsonl file as a JSON object; blank lines are skipped. A bad line is a
// kiln::Error naming the file and line, except an unterminated, unparsable last line: that is what
// a crash mid-write leaves, and it is ignored.
std::vector<nlohmann::json> read_metrics_jsonl(const std::filesystem::path& path);

}  // namespace kiln
