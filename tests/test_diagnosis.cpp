// kiln diagnose on a tiny run whose text encoder stayed frozen: its drift is exactly 0, the UNet's
// is not, and the swap test's "trained text encoder + base UNet" model draws exactly the base's
// images, so the UNet is blamed for whatever changed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include "data/synthetic.h"
#include "golden_compare.h"
#include "lab/diagnosis.h"
#include "train/run_diagnosis.h"
#include "lab/run_report.h"
#include "test_support.h"
#include "train/run_config.h"
#include "train/trainer.h"

namespace kiln {
namespace {

class DiagnosisTest : public test::TempDirTest {};

TEST_F(DiagnosisTest, FrozenTextEncoderHasNoDriftAndTheUNetIsBlamed) {
  write_synthetic_dataset(dir_ / "data", 8, 64, 5);
  const auto run_file = dir_ / "run.toml";
  test::write_bytes(run_file,
                    fmt::format(R"([model]
checkpoint = "{}"
config = "{}"
[data]
folders = ["data"]
resolution = 64
min_bucket = 32
max_bucket = 128
bucket_step = 32
batch_size = 4
[text_encoder]
train = false
[unet]
lr = 5e-3
[training]
epochs = 2
[checkpoints]
every_epochs = 1
dtype = "fp32"
[samples]
steps = 3
width = 64
height = 64
)",
                                test::tiny_model_path().string(), test::tiny_config_path().string()));
  TrainOptions options;
  options.run_dir = dir_ / "run";
  train(read_run_config(run_file), options);

  auto request = diagnosis_request_for_run(dir_ / "run");
  ASSERT_EQ(request.checkpoints.size(), 2u);
  EXPECT_EQ(request.checkpoints[0].filename(), "e0001.safetensors");
  request.prompts = {"a red circle"};
  request.seeds = {1, 2};
  // The default policy skips the swap test when one part is frozen; Every runs it anyway.
  EXPECT_FALSE(diagnose(request).checkpoints.back().swap.has_value());
  request.swap_test = SwapTestPolicy::Every;
  const auto diagnosis = diagnose(request);
  for (const auto& c : diagnosis.checkpoints) {
    for (const auto& g : c.drift) {
      if (g.name == "te") {
        EXPECT_EQ(g.relative_drift, 0.0);
      }
      if (g.name == "unet") {
        EXPECT_GT(g.relative_drift, 0.0);
      }
    }
    EXPECT_NE(c.verdict.find(c.label), std::string::npos);
  }
  ASSERT_TRUE(diagnosis.checkpoints.back().swap.has_value());
  const auto& swap = *diagnosis.checkpoints.back().swap;
  // The "trained" text encoder is the base one: the same images as the base model, to the bit.
  EXPECT_EQ(swap.trained_te_base_unet.mean.saturation, diagnosis.base.mean.saturation);
  EXPECT_EQ(swap.trained_te_base_unet.diversity, diagnosis.base.diversity);
  EXPECT_EQ(*swap.trained_te_base_unet.change_control, 0.0);
  EXPECT_EQ(*swap.trained_te_base_unet.prompt_drift, 0.0);
  // And the trained UNet inside the base model draws what the whole trained model draws.
  EXPECT_EQ(swap.trained_unet_base_te.mean.saturation, diagnosis.checkpoints.back().images.mean.saturation);
  // A frozen text encoder: its prompt drift is exactly 0; the UNet moved the pictures.
  EXPECT_EQ(*diagnosis.checkpoints.back().images.prompt_drift, 0.0);
  EXPECT_GT(*diagnosis.checkpoints.back().images.change_control, 0.0);
  // The run's training folder is the look the bleed is measured towards.
  EXPECT_TRUE(diagnosis.checkpoints.back().images.style_bleed.has_value());
  for (const auto& c : diagnosis.checkpoints)
    for (const auto& sign : c.signs) EXPECT_EQ(sign.part, Part::Unet) << sign.text;

  write_diagnosis(diagnosis, dir_ / "run" / "diagnose");
  const auto json = nlohmann::json::parse(test::read_bytes(dir_ / "run" / "diagnose" / "diagnose.json"));
  EXPECT_EQ(json["checkpoints"].size(), 2u);
  // Two checkpoints, then the summary: a line per part and the recommended checkpoint.
  EXPECT_EQ(json["verdicts"].size(), 5u);
  EXPECT_EQ(json["summary"][1], "text encoder unchanged (not trained)");
  EXPECT_NE(test::read_bytes(dir_ / "run" / "diagnose" / "weight_drift.svg").find("<svg"), std::string::npos);

  // "a red circle" is a world prompt: every model's two cells are read for colour and shape.
  ASSERT_TRUE(diagnosis.base.adherence.has_value());
  EXPECT_EQ(diagnosis.base.adherence->cells, 2);
  ASSERT_TRUE(swap.trained_te_base_unet.adherence.has_value());
  EXPECT_EQ(swap.trained_te_base_unet.adherence->both, diagnosis.base.adherence->both);
  for (const auto& c : json["checkpoints"]) {
    ASSERT_TRUE(c["images"].contains("prompt_adherence")) << c.dump();
    EXPECT_EQ(c["images"]["prompt_adherence"]["cells"], 2);
    const double both = c["images"]["prompt_adherence"]["both"];
    EXPECT_LE(both, c["images"]["prompt_adherence"]["colour"].get<double>());
    EXPECT_LE(both, c["images"]["prompt_adherence"]["shape"].get<double>());
  }
  EXPECT_TRUE(json["swap_test"]["trained_unet_base_text_encoder"].contains("prompt_adherence"));
  EXPECT_EQ(json["thresholds"]["adherence_drop"], 0.25);
  EXPECT_NE(test::read_bytes(dir_ / "run" / "diagnose" / "prompt_adherence.svg").find("<svg"),
            std::string::npos);
  EXPECT_NE(test::read_bytes(dir_ / "run" / "diagnose" / "weight_drift_blocks.svg").find("unet.mid"),
            std::string::npos);
}

// A diagnosis put together by hand (no model): what write_diagnosis writes for it, and how the run
// report shows it.
TEST_F(DiagnosisTest, WritesAdherenceAndPerBlockPlotsThatTheReportInlines) {
  Diagnosis d;
  d.base.mean = {0.2, 0.1, 10, 0.05};
  d.base.diversity = 0.3;
  d.base.adherence = PromptAdherence{.colour = 1.0, .shape = 0.75, .both = 0.75, .cells = 4};
  for (int i = 1; i <= 3; ++i) {
    CheckpointDiagnosis c;
    c.label = fmt::format("e{:04}", i);
    c.images = d.base;
    c.images.adherence = PromptAdherence{.colour = 1.0, .shape = 0.75 - 0.25 * i, .both = 0.75 - 0.25 * i, .cells = 4};
    c.drift = {{"te.layer.0", 0.0, 10},
               {"unet.down.0", 0.01 * i, 10},
               {"unet.mid", 0.02 * i, 10},
               {"unet.up.0", 0.03 * i, 10},
               {"te", 0.0, 10},
               {"unet", 0.02 * i, 30}};
    c.verdict = c.label + ": within range";
    d.checkpoints.push_back(std::move(c));
  }
  d.checkpoints.back().swap = SwapTest{d.checkpoints.back().images, d.base};
  summarise(d);
  const auto json = d.to_json();
  EXPECT_EQ(json["base"]["prompt_adherence"]["both"], 0.75);
  EXPECT_EQ(json["base"]["prompt_adherence"]["cells"], 4);
  EXPECT_EQ(json["checkpoints"][2]["images"]["prompt_adherence"]["shape"], 0.0);
  EXPECT_EQ(json["swap_test"], json["checkpoints"][2]["swap_test"]);
  EXPECT_EQ(json["verdicts"].back(), d.summary.back());

  const auto run = dir_ / "run";
  std::filesystem::create_directories(run);
  test::write_bytes(run / "run.toml", "[model]\ncheckpoint = \"base.safetensors\"\n");
  write_diagnosis(d, run / "diagnose");
  for (const char* svg :
       {"image_statistics.svg", "weight_drift.svg", "weight_drift_blocks.svg", "prompt_adherence.svg"})
    EXPECT_TRUE(std::filesystem::is_regular_file(run / "diagnose" / svg)) << svg;
  const std::string blocks = test::read_bytes(run / "diagnose" / "weight_drift_blocks.svg");
  for (const char* name :
       {">te.layer.0<", ">unet.down.0<", ">unet.mid<", ">unet.up.0<", ">e0001<", ">e0003<"})
    EXPECT_NE(blocks.find(name), std::string::npos) << name;
  EXPECT_EQ(blocks.find(">te<"), std::string::npos);  // component totals are weight_drift.svg's
  EXPECT_NE(test::read_bytes(run / "diagnose" / "prompt_adherence.svg").find("colour and shape as asked"),
            std::string::npos);

  const std::string html = run_report_html(run);
  for (const char* title :
       {"Image statistics relative to the base model", "Prompt adherence (4 cells a model)",
        "Weight drift from the base model", "Weight drift per block"})
    EXPECT_NE(html.find(title), std::string::npos) << title;
  EXPECT_NE(html.find("<tr><th>e0003</th><td class=\"num\">1</td><td class=\"num\">0</td>"),
            std::string::npos);
  EXPECT_NE(html.find("<th>trained text encoder + base UNet</th>"), std::string::npos);
  EXPECT_EQ(html.find("http://"), std::string::npos);

  // Without world prompts the adherence plot goes, also one left from an earlier diagnosis.
  Diagnosis plain = d;
  plain.base.adherence.reset();
  for (auto& c : plain.checkpoints) c.images.adherence.reset();
  plain.checkpoints.back().swap->trained_unet_base_te.adherence.reset();
  plain.checkpoints.back().swap->trained_te_base_unet.adherence.reset();
  EXPECT_FALSE(plain.to_json()["base"].contains("prompt_adherence"));
  write_diagnosis(plain, run / "diagnose");
  EXPECT_FALSE(std::filesystem::exists(run / "diagnose" / "prompt_adherence.svg"));
  EXPECT_EQ(run_report_html(run).find("Prompt adherence"), std::string::npos);
}

// Which part a verdict blames: image burn signs go to the UNet, an adherence drop to the text
// encoder, each unless that part did not train; untrained parts read "unchanged".
TEST(CheckpointVerdict, BlamesThePartThatTrained) {
  ModelImageStats base;
  base.mean = {0.2, 0.2, 30, 0.1};
  base.diversity = 0.3;
  base.adherence = PromptAdherence{.colour = 1.0, .shape = 1.0, .both = 0.9, .cells = 10};
  CheckpointDiagnosis burnt;
  burnt.label = "epoch 40";
  burnt.images = base;
  burnt.images.mean.saturation = 0.3;  // +50 %
  burnt.images.diversity = 0.15;       // -50 %
  burnt.drift = {{"te", 0.0, 10}, {"unet", 0.05, 10}};
  EXPECT_EQ(checkpoint_verdict(burnt, base, {}),
            "epoch 40: UNet over-trained: saturation +50%, seed diversity -50%; text encoder unchanged "
            "(drift: text encoder 0.0000, UNet 0.0500)");

  CheckpointDiagnosis drifted;
  drifted.label = "epoch 8";
  drifted.images = base;
  drifted.images.adherence->both = 0.5;  // -0.4, over the 0.25 threshold
  drifted.drift = {{"te", 0.02, 10}, {"unet", 0.0, 10}};
  EXPECT_EQ(checkpoint_verdict(drifted, base, {}),
            "epoch 8: UNet unchanged; text encoder over-trained: prompt adherence 90% -> 50% "
            "(drift: text encoder 0.0200, UNet 0.0000)");
  // With the text encoder frozen the same image signs and drop are the UNet's.
  drifted.drift = {{"te", 0.0, 10}, {"unet", 0.01, 10}};
  EXPECT_NE(checkpoint_verdict(drifted, base, {}).find("UNet over-trained: prompt adherence 90% -> 50%"),
            std::string::npos);
  // The colour fraction falling alone is a drop too, named as such.
  drifted.images.adherence = PromptAdherence{.colour = 0.6, .shape = 1.0, .both = 0.6, .cells = 10};
  drifted.drift = {{"te", 0.02, 10}, {"unet", 0.0, 10}};
  EXPECT_NE(checkpoint_verdict(drifted, base, {}).find("text encoder over-trained: prompt adherence (colour) 100% -> 60%"),
            std::string::npos);
  drifted.images.adherence = PromptAdherence{.colour = 1.0, .shape = 1.0, .both = 0.5, .cells = 10};
  // Both parts trained, nothing crossed: both within range. A looser threshold clears the drop.
  drifted.drift = {{"te", 0.01, 10}, {"unet", 0.01, 10}};
  DiagnosisThresholds loose;
  loose.adherence_drop = 0.5;
  EXPECT_EQ(checkpoint_verdict(drifted, base, loose),
            "epoch 8: UNet within range; text encoder within range (drift: text encoder 0.0100, UNet 0.0100)");
}

}  // namespace
}  // namespace kiln
