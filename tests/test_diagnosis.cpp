// kiln diagnose on a tiny run whose text encoder stayed frozen: its drift is exactly 0, the UNet's
// is not, and the swap test's "trained text encoder + base UNet" model draws exactly the base's
// images, so the UNet is blamed for whatever changed.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include "data/synthetic.h"
#include "golden_compare.h"
#include "lab/diagnosis.h"
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
  ASSERT_TRUE(diagnosis.trained_te_base_unet.has_value());
  // The "trained" text encoder is the base one: the same images as the base model, to the bit.
  EXPECT_EQ(diagnosis.trained_te_base_unet->mean.saturation, diagnosis.base.mean.saturation);
  EXPECT_EQ(diagnosis.trained_te_base_unet->diversity, diagnosis.base.diversity);
  // And the trained UNet inside the base model draws what the whole trained model draws.
  EXPECT_EQ(diagnosis.trained_unet_base_te->mean.saturation,
            diagnosis.checkpoints.back().images.mean.saturation);

  write_diagnosis(diagnosis, dir_ / "run" / "diagnose");
  const auto json = nlohmann::json::parse(test::read_bytes(dir_ / "run" / "diagnose" / "diagnose.json"));
  EXPECT_EQ(json["checkpoints"].size(), 2u);
  EXPECT_EQ(json["verdicts"].size(), 3u);  // two checkpoints and the swap test's attribution
  EXPECT_NE(test::read_bytes(dir_ / "run" / "diagnose" / "weight_drift.svg").find("<svg"), std::string::npos);
}

}  // namespace
}  // namespace kiln
