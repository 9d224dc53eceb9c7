// Weight drift per block on small hand-built checkpoints under real diffusers names: the grouping,
// the order, the float64 formula and the errors for checkpoints that do not match.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "lab/weight_drift.h"
#include "util/error.h"

namespace kiln {
namespace {

Checkpoint small_checkpoint() {
  torch::manual_seed(7);
  auto r = [](std::vector<int64_t> shape) { return torch::randn(shape); };
  Checkpoint c;
  c.text_encoder = {
      {"text_model.embeddings.token_embedding.weight", r({10, 4})},
      {"text_model.embeddings.position_embedding.weight", r({6, 4})},
      {"text_model.encoder.layers.0.mlp.fc1.weight", r({8, 4})},
      {"text_model.encoder.layers.1.self_attn.q_proj.weight", r({4, 4})},
      {"text_model.encoder.layers.2.layer_norm1.bias", r({4})},
      // Numbered past 9 so that a string sort would put it before layer 2.
      {"text_model.encoder.layers.10.mlp.fc2.weight", r({4, 8})},
      {"text_model.final_layer_norm.weight", r({4})},
  };
  c.unet = {
      {"conv_in.weight", r({4, 4, 3, 3})},
      {"time_embedding.linear_1.weight", r({8, 4})},
      {"down_blocks.0.resnets.0.conv1.weight", r({4, 4, 3, 3})},
      {"down_blocks.1.attentions.0.proj_in.weight", r({4, 4, 1, 1})},
      {"down_blocks.1.attentions.0.proj_in.bias", r({4})},
      {"down_blocks.1.resnets.0.norm1.weight", r({4})},
      {"down_blocks.2.downsamplers.0.conv.weight", r({4, 4, 3, 3})},
      {"down_blocks.3.resnets.1.conv2.bias", r({4})},
      {"mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight", r({4, 4})},
      {"up_blocks.0.resnets.0.conv1.weight", r({4, 4, 3, 3})},
      {"up_blocks.1.attentions.2.proj_out.weight", r({4, 4, 1, 1})},
      {"up_blocks.2.upsamplers.0.conv.weight", r({4, 4, 3, 3})},
      {"up_blocks.3.resnets.2.conv_shortcut.weight", r({4, 4, 1, 1})},
      {"conv_norm_out.weight", r({4})},
      {"conv_out.weight", r({4, 4, 3, 3})},
  };
  c.vae = {
      {"encoder.conv_in.weight", r({4, 3, 3, 3})},
      {"decoder.mid_block.attentions.0.to_q.weight", r({4, 4})},
      {"quant_conv.weight", r({8, 8, 1, 1})},
  };
  return c;
}

Checkpoint deep_copy(const Checkpoint& c) {
  Checkpoint out;
  for (auto [from, to] : {std::pair{&c.unet, &out.unet}, std::pair{&c.text_encoder, &out.text_encoder},
                          std::pair{&c.vae, &out.vae}})
    for (const auto& [k, v] : *from) (*to)[k] = v.clone();
  return out;
}

const DriftGroup& find(const std::vector<DriftGroup>& groups, const std::string& name) {
  for (const DriftGroup& g : groups)
    if (g.name == name) return g;
  throw std::runtime_error("no group " + name);
}

std::vector<std::string> names(const std::vector<DriftGroup>& groups) {
  std::vector<std::string> out;
  for (const DriftGroup& g : groups) out.push_back(g.name);
  return out;
}

TEST(WeightDrift, GroupsInNetworkOrderThenTotals) {
  const Checkpoint base = small_checkpoint();
  const std::vector<std::string> expected = {"te.embeddings", "te.layer.0",
                                             "te.layer.1",    "te.layer.2",
                                             "te.layer.10",   "te.final_layer_norm",
                                             "unet.conv_in",  "unet.time_embedding",
                                             "unet.down.0",   "unet.down.1",
                                             "unet.down.2",   "unet.down.3",
                                             "unet.mid",      "unet.up.0",
                                             "unet.up.1",     "unet.up.2",
                                             "unet.up.3",     "unet.out",
                                             "vae",           "te",
                                             "unet"};
  EXPECT_EQ(names(weight_drift(base, base)), expected);
  const DriftReport report = weight_drift_report(base, base);
  EXPECT_EQ(names(report.components), (std::vector<std::string>{"te", "unet", "vae"}));
}

TEST(WeightDrift, IdenticalCheckpointsDriftZero) {
  const Checkpoint base = small_checkpoint();
  const Checkpoint trained = deep_copy(base);
  for (const DriftGroup& g : weight_drift(trained, base)) {
    EXPECT_EQ(g.relative_drift, 0.0) << g.name;
    EXPECT_GT(g.parameters, 0) << g.name;
  }
}

TEST(WeightDrift, ScalingOneBlockShowsOnlyThere) {
  const Checkpoint base = small_checkpoint();
  Checkpoint trained = deep_copy(base);
  double down1_sq = 0, unet_sq = 0;
  int64_t down1_params = 0;
  for (auto& [key, t] : trained.unet) {
    const double sq = t.to(torch::kFloat64).square().sum().item<double>();
    unet_sq += sq;
    if (key.starts_with("down_blocks.1.")) {
      t.mul_(1.1);
      down1_sq += sq;
      down1_params += t.numel();
    }
  }
  const std::vector<DriftGroup> groups = weight_drift(trained, base);
  for (const DriftGroup& g : groups) {
    if (g.name == "unet.down.1") {
      EXPECT_NEAR(g.relative_drift, 0.1, 1e-6);
      EXPECT_EQ(g.parameters, down1_params);
    } else if (g.name == "unet") {
      EXPECT_NEAR(g.relative_drift, 0.1 * std::sqrt(down1_sq / unet_sq), 1e-6);
    } else {
      EXPECT_EQ(g.relative_drift, 0.0) << g.name;
    }
  }
  EXPECT_EQ(find(groups, "unet").parameters,
            find(groups, "unet.conv_in").parameters + find(groups, "unet.time_embedding").parameters +
                find(groups, "unet.down.0").parameters + down1_params +
                find(groups, "unet.down.2").parameters + find(groups, "unet.down.3").parameters +
                find(groups, "unet.mid").parameters + find(groups, "unet.up.0").parameters +
                find(groups, "unet.up.1").parameters + find(groups, "unet.up.2").parameters +
                find(groups, "unet.up.3").parameters + find(groups, "unet.out").parameters);
}

TEST(WeightDrift, HalfPrecisionAccumulatesInDouble) {
  Checkpoint base, trained;
  base.vae["decoder.conv_out.weight"] = torch::full({64, 64}, 2.0, torch::kFloat16);
  trained.vae["decoder.conv_out.weight"] = torch::full({64, 64}, 2.5, torch::kFloat16);
  const std::vector<DriftGroup> groups = weight_drift(trained, base);
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].name, "vae");
  EXPECT_NEAR(groups[0].relative_drift, 0.25, 1e-12);
  EXPECT_EQ(groups[0].parameters, 64 * 64);
}

TEST(WeightDrift, AbsentComponentsAreLeftOut) {
  Checkpoint base = small_checkpoint();
  base.text_encoder.clear();
  base.vae.clear();
  for (const DriftGroup& g : weight_drift(base, base)) EXPECT_TRUE(g.name.starts_with("unet")) << g.name;
}

TEST(WeightDrift, GroupMembership) {
  EXPECT_EQ(drift_group_name("unet", "down_blocks.1.attentions.0.proj_in.weight"), "unet.down.1");
  EXPECT_EQ(drift_group_name("unet", "down_blocks.3.resnets.0.time_emb_proj.weight"), "unet.down.3");
  EXPECT_EQ(drift_group_name("unet", "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"),
            "unet.up.2");
  EXPECT_EQ(drift_group_name("unet", "mid_block.resnets.1.norm1.bias"), "unet.mid");
  EXPECT_EQ(drift_group_name("unet", "time_embedding.linear_2.bias"), "unet.time_embedding");
  EXPECT_EQ(drift_group_name("unet", "conv_in.bias"), "unet.conv_in");
  EXPECT_EQ(drift_group_name("unet", "conv_norm_out.weight"), "unet.out");
  EXPECT_EQ(drift_group_name("unet", "conv_out.bias"), "unet.out");
  EXPECT_EQ(drift_group_name("te", "text_model.encoder.layers.3.mlp.fc1.weight"), "te.layer.3");
  EXPECT_EQ(drift_group_name("te", "text_model.encoder.layers.11.self_attn.out_proj.bias"), "te.layer.11");
  EXPECT_EQ(drift_group_name("te", "text_model.embeddings.token_embedding.weight"), "te.embeddings");
  EXPECT_EQ(drift_group_name("te", "text_model.final_layer_norm.bias"), "te.final_layer_norm");
  EXPECT_EQ(drift_group_name("vae", "decoder.up_blocks.0.resnets.0.conv1.weight"), "vae");
  EXPECT_EQ(drift_group_name("unet", "class_embedding.linear_1.weight"), "unet.other");
}

void expect_error_naming(const Checkpoint& trained, const Checkpoint& base, const std::string& needle) {
  try {
    weight_drift(trained, base);
    ADD_FAILURE() << "no kiln::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(WeightDrift, MissingKeyThrowsNamingIt) {
  const Checkpoint base = small_checkpoint();
  Checkpoint trained = deep_copy(base);
  trained.unet.erase("mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight");
  expect_error_naming(trained, base, "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight");
  // And the other way round: a tensor the base lacks.
  expect_error_naming(base, trained, "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight");
}

TEST(WeightDrift, ShapeMismatchThrowsNamingKey) {
  const Checkpoint base = small_checkpoint();
  Checkpoint trained = deep_copy(base);
  trained.text_encoder["text_model.encoder.layers.0.mlp.fc1.weight"] = torch::zeros({4, 8});
  expect_error_naming(trained, base, "text_model.encoder.layers.0.mlp.fc1.weight");
}

TEST(WeightDrift, ComponentMissingOnOneSideThrows) {
  const Checkpoint base = small_checkpoint();
  Checkpoint trained = deep_copy(base);
  trained.vae.clear();
  expect_error_naming(trained, base, "trained checkpoint has no VAE");
  expect_error_naming(base, trained, "base checkpoint has no VAE");
}

}  // namespace
}  // namespace kiln
