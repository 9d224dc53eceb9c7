// `kiln demo --quick`: the whole demo pipeline at a tiny size, through the CLI as a user runs it —
// the world, a base model trained from nothing, seven experiments with grids, GIFs, diagnoses and
// reports, two merges, the front page — and every artefact checked.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "demo/demo.h"
#include "demo/demo_report.h"
#include "demo/shipped_base.h"
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
  const fs::path base = cache / "demo-base-v3-quick";
  ASSERT_TRUE(fs::is_regular_file(base / "model_index.json"));
  EXPECT_NO_THROW(kiln::read_checkpoint(base));
  EXPECT_TRUE(fs::is_regular_file(out / "world.png"));
  // The base's training run keeps its logs, not its scratch weights.
  EXPECT_TRUE(fs::is_regular_file(out / "base-training" / "base-run" / "metrics.jsonl"));
  EXPECT_FALSE(fs::exists(out / "base-training" / "init"));
  EXPECT_EQ(count_with_suffix(out / "base-training" / "base-run" / "checkpoints", ".state.safetensors"), 0);

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

// The front page's verdict table: the first checkpoint a part is called over-trained at, per part;
// "healthy" when no checkpoint is.
TEST_F(DemoTest, FrontPageSaysWhichPartBurntAndWhen) {
  const auto world = kiln::write_demo_world(dir_ / "world", {4, 4, 4, 64});
  kiln::DemoResult result;
  result.base = dir_ / "base";
  kiln::DemoRun healthy, drifted;
  healthy.experiment = kiln::demo_experiments()[0];
  healthy.run_dir = dir_ / "runs" / "style";
  healthy.labels = {"epoch 6", "epoch 12"};
  healthy.checkpoint_verdicts = {"epoch 6: UNet within range; text encoder within range",
                                 "epoch 12: UNet within range; text encoder within range"};
  drifted.experiment = kiln::demo_experiments()[5];
  drifted.run_dir = dir_ / "runs" / "te-high";
  drifted.labels = {"epoch 12", "epoch 24", "epoch 36"};
  drifted.checkpoint_verdicts = {"epoch 12: UNet unchanged; text encoder within range",
                                 "epoch 24: UNet unchanged; text encoder over-trained: prompt adherence",
                                 "epoch 36: UNet over-trained: contrast +40%; text encoder over-trained: x"};
  drifted.final_verdict = drifted.checkpoint_verdicts.back();
  result.runs = {healthy, drifted};
  const auto page = read_bytes(kiln::write_demo_report(result, world, dir_));
  EXPECT_NE(page.find("<span class=\"good\">healthy</span>"), std::string::npos);
  EXPECT_NE(page.find("UNet over-trained from epoch 36</span>"), std::string::npos);
  EXPECT_NE(page.find("text encoder over-trained from epoch 24</span>"), std::string::npos);
  // Pictures that are not there are named, not silently left out.
  EXPECT_NE(page.find("missing: " + (drifted.run_dir / "grid" / "grid.png").string()), std::string::npos);
  EXPECT_TRUE(fs::is_regular_file(dir_ / "world.png"));
}

// The base that ships with kiln is a complete diffusers folder of the golden tiny architecture (what
// the demo's runs and --config expect), stored in fp16.
TEST(DemoBase, ShippedBaseIsTheTinyArchitecture) {
  const fs::path base = fs::path(KILN_SOURCE_DIR) / "assets" / "demo-base";
  const auto checkpoint = kiln::read_checkpoint(base);
  EXPECT_EQ(checkpoint.layout, kiln::CheckpointLayout::Diffusers);
  EXPECT_TRUE(checkpoint.configs_complete);
  EXPECT_EQ(checkpoint.configs, kiln::tiny_configs());
  for (const auto* dict : {&checkpoint.unet, &checkpoint.text_encoder, &checkpoint.vae}) {
    ASSERT_FALSE(dict->empty());
    EXPECT_EQ(dict->begin()->second.scalar_type(), torch::kHalf);
  }
}

// Where the shipped base is looked for, in order, and what the demo says when it is nowhere: it never
// retrains unasked (that is an hour and a half), and fails before writing anything big.
TEST_F(DemoTest, ShippedBaseIsFoundBesideTheBinaryOrNamedWhereItWasLookedFor) {
  const auto candidates = kiln::shipped_base_candidates("/opt/k/bin/kiln", fs::path("/data"), "/src/kiln");
  EXPECT_EQ(candidates, (std::vector<fs::path>{"/data/demo-base", "/opt/k/share/kiln/demo-base",
                                               "/opt/k/assets/demo-base", "/src/kiln/assets/demo-base"}));
  EXPECT_EQ(kiln::shipped_base_candidates("", std::nullopt, "/src/kiln"),
            (std::vector<fs::path>{"/src/kiln/assets/demo-base"}));

  const fs::path empty = dir_ / "nothing" / "demo-base", shipped = dir_ / "share" / "demo-base";
  fs::create_directories(empty);
  fs::create_directories(shipped);
  std::ofstream(shipped / "model_index.json") << "{}";
  EXPECT_EQ(kiln::find_shipped_base({empty, shipped}), shipped);
  EXPECT_FALSE(kiln::find_shipped_base({empty}).has_value());

  kiln::DemoOptions options;
  options.out_dir = dir_ / "demo";
  options.cache_dir = dir_ / "cache";
  options.shipped_base_candidates = {empty};
  const auto error = kiln::test::error_of([&] { kiln::run_demo(options); });
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find("is in none of: " + empty.string() + ". Set KILN_DATA_DIR"), std::string::npos) << *error;
  EXPECT_NE(error->find("--retrain-base"), std::string::npos) << *error;
  EXPECT_FALSE(fs::exists(dir_ / "demo" / "world" / "plain"));
  EXPECT_FALSE(fs::exists(dir_ / "cache"));
}

}  // namespace
