// `kiln demo --quick`: the whole demo pipeline at a tiny size, through the CLI as a user runs it —
// the world, a base model trained from nothing, seven experiments with grids, GIFs, diagnoses and
// reports, two merges, the front page — and every artefact checked.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "demo/demo.h"
#include "image/png.h"
#include "io/checkpoint.h"
#include "lab/run_report.h"
#include "test_support.h"

namespace {

namespace fs = std::filesystem;
using kiln::test::read_bytes;
using kiln::test::run_kiln;

class DemoTest : public kiln::test::TempDirTest {};

int count_with_suffix(const fs::path& dir, const std::string& suffix) {
  int n = 0;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().ends_with(suffix)) ++n;
  return n;
}

TEST_F(DemoTest, QuickDemoWritesEveryArtefact) {
  const fs::path out = dir_ / "demo", cache = dir_ / "cache";
  const auto result = run_kiln("demo --quick --out '" + out.string() + "' --cache '" + cache.string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;

  // It ends by printing the report's path.
  const fs::path report = out / "report.html";
  EXPECT_NE(result.output.find(report.string() + "\n"), std::string::npos) << result.output;
  ASSERT_TRUE(fs::is_regular_file(report));

  // The world and the base model kiln trained in it (a diffusers folder, cached for the next run).
  EXPECT_EQ(count_with_suffix(out / "world" / "plain", ".png"), 48);
  EXPECT_EQ(count_with_suffix(out / "world" / "style", ".png"), 8);
  EXPECT_NE(read_bytes(out / "world" / "style" / "0000.txt").find("kilnglaze style, a "), std::string::npos);
  const fs::path base = cache / "demo-base-v2-quick";
  ASSERT_TRUE(fs::is_regular_file(base / "model_index.json"));
  EXPECT_NO_THROW(kiln::read_checkpoint(base));
  EXPECT_TRUE(fs::is_regular_file(out / "world.png"));

  const std::string page = read_bytes(report);
  for (const auto& experiment : kiln::demo_experiments()) {
    SCOPED_TRACE(experiment.name);
    const fs::path run = out / "runs" / experiment.name;
    EXPECT_TRUE(fs::is_regular_file(run / "run.toml"));
    EXPECT_TRUE(fs::is_regular_file(run / "metrics.jsonl"));
    EXPECT_TRUE(fs::is_regular_file(run / "report.html"));
    EXPECT_TRUE(fs::is_regular_file(run / "diagnose" / "diagnose.json"));
    EXPECT_TRUE(fs::is_regular_file(run / "diagnose" / "image_statistics.svg"));
    // base + 2 checkpoints down, 6 prompts across; the GIF steps through the 3 models.
    const auto grid = kiln::read_png(run / "grid" / "grid.png");
    EXPECT_GT(grid.width, 6 * 64);
    EXPECT_GT(grid.height, 3 * 64);
    const std::string gif = read_bytes(run / "grid" / "progress.gif");
    EXPECT_EQ(gif.substr(0, 6), "GIF89a");
    // Two epochs, a checkpoint each; only the newest resume state is kept.
    EXPECT_EQ(count_with_suffix(run / "checkpoints", ".state.safetensors"), 1);
    if (experiment.lora) {
      // The LoRA files (kohya names) and their merges into the base, which were diagnosed.
      EXPECT_EQ(count_with_suffix(run / "merged", ".safetensors"), 2);
      EXPECT_NE(read_bytes(run / "checkpoints" / "e0002.safetensors").find("lora_unet_"), std::string::npos);
    } else {
      EXPECT_EQ(count_with_suffix(run / "checkpoints", ".safetensors") - 1, 2);
    }
    EXPECT_NE(page.find("id=\"" + experiment.name + "\""), std::string::npos);
    EXPECT_NE(page.find("runs/" + experiment.name + "/report.html"), std::string::npos);
  }
  for (const auto* merge : {"unet-high-tempered.safetensors", "style-added-to-te-normal.safetensors"})
    EXPECT_NO_THROW(kiln::read_checkpoint(out / "merges" / merge, base)) << merge;
  EXPECT_TRUE(fs::is_regular_file(out / "merges" / "grid" / "grid.png"));

  // The front page is self-contained: pictures inline, nothing fetched.
  EXPECT_NE(page.find("data:image/gif;base64,"), std::string::npos);
  EXPECT_NE(page.find("<svg"), std::string::npos);
  EXPECT_EQ(page.find("http"), std::string::npos);
}

}  // namespace
