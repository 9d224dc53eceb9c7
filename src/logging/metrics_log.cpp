// metrics.jsonl plus TensorBoard scalars for each logged training step.
#include "logging/metrics_log.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string_view>
#include <system_error>

#include "util/error.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::strerror(errno); }

std::string read_whole_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error(path, "cannot open: " + errno_text());
  std::string data{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw_file_error(path, "read failed: " + errno_text());
  return data;
}

bool is_blank(std::string_view line) { return line.find_first_not_of(" \t\r") == std::string_view::npos; }

// A crash can leave the last line without its newline; appending after it would glue two records into
// one bad line in the middle of the file. A complete fragment only needs the newline (returns true);
// a partial one is cut off, as the reader would have ignored it anyway.
bool repair_unterminated_last_line(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  const std::string data = read_whole_file(path);
  if (data.empty() || data.back() == '\n') return false;
  const size_t line_start = data.rfind('\n') == std::string::npos ? 0 : data.rfind('\n') + 1;
  const std::string_view fragment = std::string_view(data).substr(line_start);
  if (!is_blank(fragment) && nlohmann::json::accept(fragment)) return true;
  fs::resize_file(path, line_start, ec);
  if (ec) throw_file_error(path, "cannot cut off the unterminated last line: " + ec.message());
  return false;
}

}  // namespace

void MetricsLog::FileCloser::operator()(std::FILE* f) const { std::fclose(f); }

MetricsLog::MetricsLog(const fs::path& run_dir, bool tensorboard) : jsonl_path_(run_dir / "metrics.jsonl") {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw_file_error(run_dir, "cannot create run directory: " + ec.message());

  const bool needs_newline = repair_unterminated_last_line(jsonl_path_);
  jsonl_.reset(std::fopen(jsonl_path_.c_str(), "ab"));
  if (!jsonl_) throw_file_error(jsonl_path_, "cannot open for appending: " + errno_text());
  if (needs_newline && (std::fputc('\n', jsonl_.get()) == EOF || std::fflush(jsonl_.get()) != 0))
    throw_file_error(jsonl_path_, "write failed: " + errno_text());

  if (tensorboard) tensorboard_.emplace(run_dir / "tensorboard");
}

void MetricsLog::log(int64_t step, const std::map<std::string, double>& values,
                     std::optional<int64_t> epoch) {
  // ordered_json keeps step/epoch/time first, which makes the file readable with head and grep.
  nlohmann::ordered_json line;
  line["step"] = step;
  if (epoch) line["epoch"] = *epoch;
  const double time = unix_seconds_now();
  line["time"] = time;
  for (const auto& [tag, value] : values) {
    if (tag == "step" || tag == "epoch" || tag == "time")
      throw_file_error(jsonl_path_, "metric name \"" + tag + "\" is reserved");
    line[tag] = value;
  }

  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (std::fwrite(text.data(), 1, text.size(), jsonl_.get()) != text.size() || std::fflush(jsonl_.get()) != 0)
    throw_file_error(jsonl_path_, "write failed: " + errno_text());

  if (tensorboard_)
    for (const auto& [tag, value] : values) tensorboard_->add_scalar(tag, value, step, time);
}

std::vector<nlohmann::json> read_metrics_jsonl(const fs::path& path) {
  const std::string data = read_whole_file(path);
  std::vector<nlohmann::json> lines;
  size_t start = 0;
  for (size_t line_number = 1; start < data.size(); ++line_number) {
    const size_t newline = data.find('\n', start);
    const bool terminated = newline != std::string::npos;
    const size_t end = terminated ? newline : data.size();
    const std::string_view line = std::string_view(data).substr(start, end - start);
    start = end + 1;
    if (is_blank(line)) continue;

    nlohmann::json parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) {
      if (!terminated) break;
      throw_file_error(path, "line " + std::to_string(line_number) + ": not valid JSON");
    }
    if (!parsed.is_object())
      throw_file_error(path, "line " + std::to_string(line_number) + ": not a JSON object");
    lines.push_back(std::move(parsed));
  }
  return lines;
}

}  // namespace kiln
