// The run report: base64, a fake run folder turned into one offline HTML page, and the error for a
// folder that is not a run. Also leaves a fixture run + report under the build folder for the
// headless-browser screenshot test (tests/report_screenshot.sh).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "image/png.h"
#include "lab/run_report.h"
#include "test_support.h"
#include "util/error.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

size_t count(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = s.find(needle); pos != std::string::npos; pos = s.find(needle, pos + 1)) ++n;
  return n;
}

constexpr const char* kRunToml =
    "[model]\ncheckpoint = \"base/v1-5.safetensors\"\n\n[train]\nepochs = 4\n# <tuned> & ready\n";

// What `kiln train` leaves behind, small: settings, a few metrics lines, two checkpoints with
// samples, and an empty checkpoint file per epoch saved.
void make_run_folder(const fs::path& run) {
  fs::create_directories(run / "checkpoints");
  test::write_bytes(run / "run.toml", kRunToml);
  std::string metrics;
  for (int step = 1; step <= 8; ++step) {
    const int epoch = (step + 1) / 2;
    metrics += "{\"step\":" + std::to_string(step) + ",\"epoch\":" + std::to_string(epoch) +
               ",\"time\":" + std::to_string(1700000000 + 10 * step) +
               ",\"loss/step\":" + std::to_string(0.2 - 0.01 * step) +
               ",\"lr/text_encoder\":1e-6,\"lr/unet\":" + std::to_string(2e-6 * step) +
               ",\"d/unet\":" + std::to_string(1e-6 * step) + ",\"grad_norm/unet\":0.5" +
               ",\"performance/images_per_second\":" + std::to_string(3 + step % 2) + "}\n";
    if (step % 2 == 0) {
      metrics += "{\"step\":" + std::to_string(step) + ",\"epoch\":" + std::to_string(epoch) +
                 ",\"loss/epoch\":" + std::to_string(0.19 - 0.02 * epoch) +
                 ",\"loss/val\":" + std::to_string(0.2 - 0.01 * epoch) + ",\"loss/stabilize-train\":null}\n";
    }
  }
  test::write_bytes(run / "metrics.jsonl", metrics);
  for (const char* ckpt : {"e0002", "e0004"}) {
    test::write_bytes(run / "checkpoints" / (std::string(ckpt) + ".safetensors"), "");
    test::write_bytes(run / "checkpoints" / (std::string(ckpt) + ".state.safetensors"), "");
    Image image(32, 24, ckpt == std::string("e0002") ? Rgb{200, 40, 40} : Rgb{40, 40, 200});
    for (int x = 0; x < 32; ++x) image.set(x, x * 24 / 32, Rgb{255, 255, 255});
    fs::create_directories(run / "samples" / ckpt);
    write_png(run / "samples" / ckpt / "00-1.png", image);
  }
}

TEST(Base64, Rfc4648Vectors) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("foob"), "Zm9vYg==");
  EXPECT_EQ(base64_encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_encode(std::string("\xff\xfe\x00", 3)), "//4A");
}

class RunReport : public test::TempDirTest {};

TEST_F(RunReport, IsOneOfflinePageAboutTheRun) {
  const fs::path run = dir_ / "my-run";
  make_run_folder(run);
  const fs::path out = write_run_report(run);
  EXPECT_EQ(out, run / "report.html");
  ASSERT_TRUE(fs::is_regular_file(out));
  const std::string html = test::read_bytes(out);

  EXPECT_NE(html.find("<title>kiln run report: my-run</title>"), std::string::npos);
  EXPECT_NE(html.find("<h1>kiln run report: my-run</h1>"), std::string::npos);
  // loss, val/stabilised, lr, d, grad norm, images/s.
  EXPECT_GE(count(html, "<svg"), 3u);
  EXPECT_EQ(count(html, "<svg"), 6u);
  EXPECT_NE(html.find("Training loss"), std::string::npos);
  EXPECT_NE(html.find("Learning rate"), std::string::npos);
  EXPECT_NE(html.find("optimizer step"), std::string::npos);
  EXPECT_NE(html.find("epochs done"), std::string::npos);
  // Summary: 4 epochs and 8 steps done, the checkpoints listed.
  EXPECT_NE(html.find("<th>epochs done</th><td>4</td>"), std::string::npos);
  EXPECT_NE(html.find("<th>optimizer steps done</th><td>8</td>"), std::string::npos);
  EXPECT_NE(html.find("e0002.safetensors"), std::string::npos);
  EXPECT_NE(html.find("e0004.state.safetensors"), std::string::npos);
  // Both samples inline, the earlier checkpoint's row first.
  const std::string png2 = base64_encode(test::read_bytes(run / "samples/e0002/00-1.png"));
  const std::string png4 = base64_encode(test::read_bytes(run / "samples/e0004/00-1.png"));
  EXPECT_EQ(count(html, "data:image/png;base64,"), 2u);
  const size_t at2 = html.find("data:image/png;base64," + png2),
               at4 = html.find("data:image/png;base64," + png4);
  ASSERT_NE(at2, std::string::npos);
  ASSERT_NE(at4, std::string::npos);
  EXPECT_LT(at2, at4);
  EXPECT_NE(html.find("<th>00-1.png</th>"), std::string::npos);
  // The settings, escaped.
  EXPECT_NE(html.find("checkpoint = &quot;base/v1-5.safetensors&quot;"), std::string::npos);
  EXPECT_NE(html.find("# &lt;tuned&gt; &amp; ready"), std::string::npos);
  EXPECT_NE(html.find("No diagnosis yet: <code>kiln diagnose"), std::string::npos);
  // Nothing fetched from anywhere.
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find("src=\"/"), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
}

TEST_F(RunReport, EmbedsGridGifAndDiagnosisWhenPresent) {
  const fs::path run = dir_ / "run";
  make_run_folder(run);
  fs::create_directories(run / "grid");
  fs::create_directories(run / "diagnose");
  write_png(run / "grid" / "grid.png", Image(8, 8, Rgb{1, 2, 3}));
  test::write_bytes(run / "grid" / "progress.gif", "GIF89a-not-really");
  test::write_bytes(run / "diagnose" / "diagnose.json",
                    R"({"verdicts": ["e0004: over-trained <UNet>"],
                        "checkpoints": [{"label": "e0004", "drift": [{"group": "unet.mid", "relative_drift": 0.0123}]}]})");
  const std::string html = test::read_bytes(write_run_report(run));
  EXPECT_EQ(count(html, "data:image/png;base64,"), 3u);
  EXPECT_NE(html.find("data:image/gif;base64," + base64_encode("GIF89a-not-really")), std::string::npos);
  EXPECT_NE(html.find("<li>e0004: over-trained &lt;UNet&gt;</li>"), std::string::npos);
  EXPECT_NE(html.find("<th>unet.mid</th><td class=\"num\">0.0123</td>"), std::string::npos);
  EXPECT_EQ(html.find("No diagnosis yet"), std::string::npos);

  // A top-level "groups" table is shown as it is.
  test::write_bytes(run / "diagnose" / "diagnose.json",
                    R"({"verdicts": [], "groups": [{"group": "te.layer.3", "relative_drift": 0.5}]})");
  const std::string html2 = test::read_bytes(write_run_report(run));
  EXPECT_NE(html2.find("<td>te.layer.3</td><td class=\"num\">0.5</td>"), std::string::npos);
}

// Every SVG `kiln diagnose` wrote is inlined in the Diagnosis section (known plots in reading
// order, others by name, without namespace or XML declaration), with the prompt-adherence table.
TEST_F(RunReport, InlinesEveryDiagnosisPlotAndTheAdherenceTable) {
  const fs::path run = dir_ / "run";
  make_run_folder(run);
  fs::create_directories(run / "diagnose");
  test::write_bytes(run / "diagnose" / "diagnose.json",
                    R"({"verdicts": ["prompt adherence: the text encoder causes the drop"],
                        "base": {"saturation": 0.2, "prompt_adherence": {"colour": 1, "shape": 0.5, "both": 0.5, "cells": 6}},
                        "checkpoints": [{"label": "e0004", "images": {"prompt_adherence": {"colour": 0.25, "shape": 0.5, "both": 0.125, "cells": 6}},
                                         "drift": [{"group": "unet.mid", "relative_drift": 0.0123}]}],
                        "swap_test": {"trained_text_encoder_base_unet": {"prompt_adherence": {"colour": 0, "shape": 0.5, "both": 0, "cells": 6}},
                                      "trained_unet_base_text_encoder": {"saturation": 0.3}}})");
  const auto svg = [](const std::string& title) {
    return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><text>" + title +
           "</text></svg>\n";
  };
  test::write_bytes(run / "diagnose" / "weight_drift_blocks.svg", svg("plot-blocks"));
  test::write_bytes(run / "diagnose" / "weight_drift.svg", svg("plot-drift"));
  test::write_bytes(run / "diagnose" / "prompt_adherence.svg",
                    "<?xml version=\"1.0\"?>\n" + svg("plot-adherence"));
  test::write_bytes(run / "diagnose" / "image_statistics.svg", svg("plot-statistics"));
  test::write_bytes(run / "diagnose" / "a_later_plot.svg", svg("plot-other"));
  test::write_bytes(run / "diagnose" / "notes.txt", svg("not-a-plot"));
  const std::string html = test::read_bytes(write_run_report(run));

  EXPECT_EQ(count(html, "<svg"), 6u + 5u);  // the metrics plots and the five diagnosis plots
  size_t last = html.find("<h2>Diagnosis</h2>");
  ASSERT_NE(last, std::string::npos);
  for (const char* title : {"plot-statistics", "plot-adherence", "plot-drift", "plot-blocks", "plot-other"}) {
    const size_t at = html.find(std::string("<figure><svg width=\"10\" height=\"10\"><text>") + title);
    ASSERT_NE(at, std::string::npos) << title;
    EXPECT_GT(at, last) << title << " out of order";
    last = at;
  }
  EXPECT_LT(last, html.find("<h2>Settings"));
  EXPECT_EQ(html.find("not-a-plot"), std::string::npos);
  EXPECT_EQ(html.find("<?xml"), std::string::npos);
  EXPECT_EQ(html.find("http://"), std::string::npos);

  EXPECT_NE(html.find("<h3>Prompt adherence"), std::string::npos);
  EXPECT_NE(html.find("<tr><th>base</th><td class=\"num\">1</td><td class=\"num\">0.5</td><td "
                      "class=\"num\">0.5</td><td class=\"num\">6</td></tr>"),
            std::string::npos);
  EXPECT_NE(html.find("<tr><th>e0004</th><td class=\"num\">0.25</td><td class=\"num\">0.5</td><td "
                      "class=\"num\">0.125</td>"),
            std::string::npos);
  EXPECT_NE(html.find("<tr><th>trained text encoder + base UNet</th><td class=\"num\">0</td>"),
            std::string::npos);
  // A model without adherence (here the other swap) has no row.
  EXPECT_EQ(html.find("<th>base text encoder + trained UNet</th>"), std::string::npos);
  EXPECT_NE(html.find("<th>unet.mid</th><td class=\"num\">0.0123</td>"), std::string::npos);
}

TEST_F(RunReport, WorksWithoutMetricsOrSamples) {
  test::write_bytes(dir_ / "run.toml", kRunToml);
  const std::string html = test::read_bytes(write_run_report(dir_));
  EXPECT_GE(count(html, "<svg"), 3u);
  EXPECT_NE(html.find("No samples yet."), std::string::npos);
  EXPECT_NE(html.find("No checkpoints yet."), std::string::npos);
}

TEST_F(RunReport, FolderWithoutRunTomlIsAnErrorNamingIt) {
  const fs::path not_a_run = dir_ / "not-a-run";
  fs::create_directories(not_a_run);
  try {
    write_run_report(not_a_run);
    FAIL() << "expected kiln::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(not_a_run.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("run.toml"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(not_a_run / "report.html"));
}

#ifdef KILN_REPORT_FIXTURE_DIR
// Kept (not in a temporary folder) so the screenshot test that runs after this binary finds it.
TEST(RunReportFixture, WritesTheScreenshotFixture) {
  const fs::path run = KILN_REPORT_FIXTURE_DIR;
  fs::remove_all(run);
  make_run_folder(run);
  const fs::path out = write_run_report(run);
  EXPECT_TRUE(fs::is_regular_file(out));
}
#endif

}  // namespace
}  // namespace kiln
