// The labelled burn benchmark (demo/burn_benchmark.h): every run of burn_benchmark_runs() on the
// demo base, judged against the truth the synthetic world gives, then each threshold swept alone
// over the kept sign values. Writes OUT/results.json and prints a Markdown report (the results file
// in bench/results/ is this output).
//
// usage: bench_diagnosis BASE_DIR OUT_DIR [RUN_NAME_FILTER] [--retruth]
// --retruth: read the truth again from every judged run's saved checkpoints (signs kept), and
// rewrite its outcome.json: for when the truth's reading of pictures changes.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "demo/burn_benchmark.h"
#include "util/atomic_file.h"

namespace {

using namespace kiln;

// The largest value of one threshold (others at their defaults) that keeps every run in time, and
// the smallest that raises no false alarm: the interval the default should sit in (empty when the
// sign cannot separate the runs by itself).
void sweep(const std::vector<BurnRunOutcome>& outcomes, double DiagnosisThresholds::*field, const char* name) {
  double latest_ok = -1, earliest_quiet = -1;
  for (double t = 0.01; t <= 2.0; t += 0.01) {
    DiagnosisThresholds thresholds;
    thresholds.*field = t;
    bool all_in_time = true, quiet = true;
    for (const auto& o : outcomes) {
      const auto j = rejudge(o, thresholds);
      all_in_time = all_in_time && j.in_time;
      quiet = quiet && !j.false_alarm;
    }
    if (all_in_time) latest_ok = t;
    if (quiet && earliest_quiet < 0) earliest_quiet = t;
  }
  std::cout << fmt::format("| {} | {:.2f} | {} | {} |\n", name, DiagnosisThresholds{}.*field,
                           earliest_quiet < 0 ? std::string("never") : fmt::format("{:.2f}", earliest_quiet),
                           latest_ok < 0 ? std::string("none") : fmt::format("{:.2f}", latest_ok));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: bench_diagnosis BASE_DIR OUT_DIR [RUN_NAME_FILTER]\n";
    return 2;
  }
  try {
    BurnBenchmarkOptions options;
    options.base = argv[1];
    options.out_dir = argv[2];
    options.console = &std::cerr;
    const bool again = std::string(argv[argc - 1]) == "--retruth";
    const std::string filter = argc > 3 && std::string(argv[3]) != "--retruth" ? argv[3] : "";
    std::vector<BurnRunOutcome> outcomes;
    nlohmann::json all = nlohmann::json::array();
    for (const auto& run : burn_benchmark_runs()) {
      if (!filter.empty() && run.name.find(filter) == std::string::npos) continue;
      // A run judged by an earlier invocation is read back, so the benchmark goes on where it stopped.
      const auto done = options.out_dir / run.name / "outcome.json";
      if (std::filesystem::is_regular_file(done)) {
        std::ifstream in(done);
        outcomes.push_back(burn_run_outcome_from_json(nlohmann::json::parse(in), run));
        if (again) {
          outcomes.back() = retruth(std::move(outcomes.back()), options);
          write_text_atomically(done, outcomes.back().to_json().dump(2) + "\n");
        }
      } else {
        outcomes.push_back(run_burn_benchmark(run, options));
        write_text_atomically(done, outcomes.back().to_json().dump(2) + "\n");
      }
      all.push_back(outcomes.back().to_json());
      write_text_atomically(options.out_dir / "results.json", all.dump(2) + "\n");
    }
    std::cout << burn_benchmark_table(outcomes) << "\n";
    std::cout << "Each threshold alone (the others at their defaults): the smallest value with no false alarm, and "
                 "the largest with every run flagged in time.\n\n| sign | default | no false alarm from | "
                 "in time up to |\n|---|---|---|---|\n";
    sweep(outcomes, &DiagnosisThresholds::style_bleed, "style bleed");
    sweep(outcomes, &DiagnosisThresholds::control_change, "control pictures changed");
    sweep(outcomes, &DiagnosisThresholds::prompt_drift, "prompt drift");
    sweep(outcomes, &DiagnosisThresholds::adherence_drop, "prompt adherence drop");
    sweep(outcomes, &DiagnosisThresholds::saturation_increase, "saturation increase");
    sweep(outcomes, &DiagnosisThresholds::contrast_increase, "contrast increase");
    sweep(outcomes, &DiagnosisThresholds::high_frequency_increase, "high-frequency increase");
    sweep(outcomes, &DiagnosisThresholds::diversity_drop, "seed diversity drop");
  } catch (const std::exception& e) {
    std::cerr << "bench_diagnosis: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
