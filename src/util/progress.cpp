#include "util/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <iostream>

namespace kiln {

namespace {
bool is_terminal(const std::ostream& out) {
  if (&out == &std::cerr) return isatty(STDERR_FILENO) != 0;
  if (&out == &std::cout) return isatty(STDOUT_FILENO) != 0;
  return false;
}
}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

ProgressBar::ProgressBar(std::ostream& out, std::string label, int64_t total, std::string unit)
    : out_(out),
      label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      interactive_(is_terminal(out)),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

double ProgressBar::rate() const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
}

std::string ProgressBar::render(int64_t done, const std::string& note) const {
  constexpr int kWidth = 24;
  const int filled = total_ > 0 ? static_cast<int>(kWidth * done / total_) : 0;
  const double per_second = rate();
  const double eta = per_second > 0 ? static_cast<double>(total_ - done) / per_second : NAN;
  std::string line = fmt::format("{}  [{}{}]  {}/{} {}", label_, std::string(filled, '#'),
                                 std::string(kWidth - filled, '.'), done, total_, unit_);
  // Slow steps read better as seconds per step, as A1111 and diffusers' tqdm show them.
  if (per_second >= 1 || per_second == 0)
    line += fmt::format("  {:.2f} it/s", per_second);
  else
    line += fmt::format("  {:.2f} s/it", 1 / per_second);
  if (done < total_) line += "  ETA " + format_duration(eta);
  if (!note.empty()) line += "  " + note;
  return line;
}

void ProgressBar::update(int64_t done, const std::string& note) {
  done_ = done;
  const auto now = std::chrono::steady_clock::now();
  if (interactive_) {
    out_ << "\r\033[K" << render(done, note) << std::flush;
  } else if (now - last_print_ >= std::chrono::seconds(5)) {
    out_ << render(done, note) << "\n" << std::flush;
    last_print_ = now;
  }
}

void ProgressBar::finish(const std::string& note) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string line = render(done_, note) + "  in " + format_duration(elapsed);
  out_ << (interactive_ ? "\r\033[K" : "") << line << "\n" << std::flush;
}

}  // namespace kiln
