// A progress line for long work: "label  [#####.....]  14/20 steps  2.35 it/s  ETA 0:03".
// On a terminal it redraws in place; into a file or pipe it writes a line at most every few seconds
// and at the end, so logs stay readable.
#pragma once
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace kiln {

class ProgressBar {
 public:
  ProgressBar(std::ostream& out, std::string label, int64_t total, std::string unit = "steps");
  // `done` of total so far; `note` (e.g. the loss) is shown after the rate.
  void update(int64_t done, const std::string& note = "");
  // Ends the line (with the final count and the average rate).
  void finish(const std::string& note = "");
  // Items per second over the whole run so far.
  double rate() const;

 private:
  std::string render(int64_t done, const std::string& note) const;
  std::ostream& out_;
  std::string label_, unit_;
  int64_t total_;
  int64_t done_ = 0;
  bool interactive_;
  std::chrono::steady_clock::time_point start_, last_print_;
};

// "1:02:03" / "2:03" for an ETA or an elapsed time.
std::string format_duration(double seconds);

}  // namespace kiln
