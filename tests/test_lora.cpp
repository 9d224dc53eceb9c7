// LoRA files on the tiny golden model: reading kohya files (and other tools' naming) against the
// model, the golden kohya merge at 0.8, applying at sampling time, writing with kohya metadata and
// hashes, SVD extraction, and the `kiln lora` / `kiln sample --lora` command lines.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include "golden_compare.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "models/model_loading.h"
#include "surgery/lora.h"
#include "surgery/lora_merge.h"
#include "util/error.h"
#include "util/sha256.h"
#include "test_support.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;
using test::all_close;

// Float32 on both sides with kohya's order of operations: the merge is expected to be bit-exact
// (measured: max abs error 0); the bound allows one float32 rounding of weights of magnitude ~1
// should a different BLAS sum the rank-4 products in another order.
constexpr test::Tolerance kMergeTolerance{1e-6, 1e-6};

fs::path golden_lora() { return test::golden_dir() / "lora.safetensors"; }

Checkpoint tiny_checkpoint() { return read_checkpoint(test::tiny_model_path(), test::tiny_config_path()); }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class LoraTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kiln-lora-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// The golden file's tensors whose names start with one of `modules` (kohya names).
StateDict golden_subset(const std::vector<std::string>& modules) {
  const auto file = SafeTensorsFile::open(golden_lora());
  StateDict out;
  for (const auto& e : file.entries())
    for (const auto& m : modules)
      if (e.name.rfind(m + ".", 0) == 0) out[e.name] = file.tensor(e.name);
  return out;
}

TEST_F(LoraTest, GoldenModulesResolveToTheirDiffusersWeights) {
  const auto checkpoint = tiny_checkpoint();
  const auto lora = read_lora(golden_lora(), checkpoint);
  ASSERT_EQ(lora.modules.size(), 210u);
  EXPECT_TRUE(lora.unknown_keys.empty());
  EXPECT_EQ(lora.metadata.at("ss_network_module"), "networks.lora");
  EXPECT_EQ(lora.metadata.at("ss_network_dim"), "4");
  EXPECT_EQ(lora.metadata.at("ss_network_alpha"), "2.0");

  std::ifstream in(test::golden_dir() / "lora_modules.json");
  const auto manifest = nlohmann::json::parse(in);
  ASSERT_EQ(manifest["count"], 210);
  std::map<std::string, const LoraModule*> by_name;
  for (const auto& m : lora.modules) by_name[m.name] = &m;
  int ff = 0, convs = 0;
  for (const auto& entry : manifest["modules"]) {
    const std::string name = entry["lora_name"];
    ASSERT_TRUE(by_name.count(name)) << name;
    const LoraModule& m = *by_name[name];
    const Component c = entry["component"] == "unet" ? Component::UNet : Component::TextEncoder;
    EXPECT_EQ(m.component, c) << name;
    EXPECT_EQ(m.weight_key, entry["diffusers_weight"]) << name;
    EXPECT_EQ(diffusers_to_ldm(c, m.weight_key), entry["ldm_weight"]) << name;
    EXPECT_EQ(m.rank(), 4);
    EXPECT_EQ(m.alpha, 2.0);
    const std::vector<int64_t> shape = entry["weight_shape"];
    EXPECT_EQ(checkpoint.component(c).at(m.weight_key).sizes().vec(), shape) << name;
    ff += name.find("_ff_net_") != std::string::npos;
    convs += shape.size() == 4;
  }
  EXPECT_EQ(ff, 2 * 16);  // ff.net.0.proj and ff.net.2 of each of the 16 transformers
  EXPECT_GT(convs, 0);    // proj_in / proj_out are 1x1 convs in SD 1.x

  // The names kiln generates for the targets are the file's names: every golden module is a
  // kohya default target, and every default target is in the golden file.
  const auto targets = lora_targets(checkpoint);
  size_t defaults = 0;
  for (const auto& t : targets.all()) {
    if (!is_kohya_default_target(t)) continue;
    ++defaults;
    EXPECT_TRUE(by_name.count(t.name)) << t.name;
  }
  EXPECT_EQ(defaults, 210u);
}

TEST_F(LoraTest, GoldenMergeAt08MatchesKohya) {
  const auto base = tiny_checkpoint();
  auto merged = base;
  const auto lora = read_lora(golden_lora(), base);
  ASSERT_EQ(lora.modules.size(), 210u);
  merge_lora(merged, lora, 0.8);

  const auto golden = test::golden_file("lora_merged_at_0.8.safetensors");
  ASSERT_EQ(golden.entries().size(), 210u);
  const StateDict got = ldm_state_dict(merged), original = ldm_state_dict(base);
  double worst = 0;
  for (const auto& e : golden.entries()) {
    ASSERT_TRUE(got.count(e.name)) << e.name;
    const auto expected = golden.tensor(e.name);
    EXPECT_TRUE(all_close(got.at(e.name), expected, kMergeTolerance, e.name));
    EXPECT_EQ(got.at(e.name).scalar_type(), expected.scalar_type());
    worst = std::max(worst, test::max_abs_error(got.at(e.name), expected));
  }
  std::cout << "[ info ] golden merge at 0.8: max abs error " << worst << " over 210 tensors\n";
  // Everything the LoRA does not target is untouched.
  int unchanged = 0;
  for (const auto& [name, tensor] : original) {
    if (golden.contains(name)) continue;
    EXPECT_TRUE(torch::equal(got.at(name), tensor)) << name;
    ++unchanged;
  }
  EXPECT_EQ(unchanged + 210, static_cast<int>(original.size()));
}

TEST_F(LoraTest, SeparateTextEncoderMultiplier) {
  const auto base = tiny_checkpoint();
  auto merged = base;
  merge_lora(merged, read_lora(golden_lora(), base), 0.8, /*text_encoder_multiplier=*/0.0);
  for (const auto& [name, t] : base.text_encoder)
    EXPECT_TRUE(torch::equal(merged.text_encoder.at(name), t)) << name;
  const std::string key = "down_blocks.0.attentions.0.proj_in.weight";
  EXPECT_FALSE(torch::equal(merged.unet.at(key), base.unet.at(key)));
}

TEST_F(LoraTest, HalfPrecisionCheckpointKeepsItsDtype) {
  auto checkpoint = tiny_checkpoint();
  for (auto& [name, t] : checkpoint.unet) t = t.to(torch::kHalf);
  const auto lora = read_lora(golden_lora(), checkpoint);
  auto merged = checkpoint;
  merge_lora(merged, lora, 0.8);
  const std::string key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
  EXPECT_EQ(merged.unet.at(key).scalar_type(), torch::kHalf);
  const auto& m = *std::find_if(lora.modules.begin(), lora.modules.end(),
                                [&](const LoraModule& x) { return x.weight_key == key; });
  const auto expected = checkpoint.unet.at(key).to(torch::kFloat) + lora_delta(m, {32, 32}, 0.8);
  EXPECT_TRUE(all_close(merged.unet.at(key).to(torch::kFloat), expected, {1e-3, 1e-3}, key));
}

TEST_F(LoraTest, PartialLoraChangesOnlyItsModules) {
  const std::vector<std::string> names = {
      "lora_te_text_model_encoder_layers_1_mlp_fc2", "lora_unet_mid_block_attentions_0_proj_in",
      "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj"};
  const auto path = dir_ / "partial.safetensors";
  save_safetensors(path, golden_subset(names));
  const auto base = tiny_checkpoint();
  const auto lora = read_lora(path, base);
  ASSERT_EQ(lora.modules.size(), 3u);
  auto merged = base;
  merge_lora(merged, lora, 0.8);
  const auto golden = test::golden_file("lora_merged_at_0.8.safetensors");
  const StateDict got = ldm_state_dict(merged), original = ldm_state_dict(base);
  int changed = 0;
  for (const auto& [name, tensor] : original) {
    if (torch::equal(got.at(name), tensor)) continue;
    ++changed;
    ASSERT_TRUE(golden.contains(name)) << name;
    EXPECT_TRUE(all_close(got.at(name), golden.tensor(name), kMergeTolerance, name));
  }
  EXPECT_EQ(changed, 3);
}

TEST_F(LoraTest, UnknownModulesAreNamedOrReturned) {
  auto tensors = golden_subset({"lora_unet_mid_block_attentions_0_proj_in"});
  tensors["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = torch::zeros({4, 32, 1, 1});
  tensors["lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight"] = torch::zeros({32, 4, 1, 1});
  tensors["lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"] = torch::scalar_tensor(1.0);
  const auto path = dir_ / "unknown.safetensors";
  save_safetensors(path, tensors);
  const auto checkpoint = tiny_checkpoint();
  const auto message = error_of([&] { read_lora(path, checkpoint); });
  EXPECT_NE(message.find(path.string() + ": 2 LoRA modules match no weight of the model"), std::string::npos)
      << message;
  EXPECT_NE(message.find("lora_unet_down_blocks_7_attentions_0_proj_in"), std::string::npos) << message;
  EXPECT_NE(message.find("lora_te2_text_model_encoder_layers_0_mlp_fc1"), std::string::npos) << message;

  const auto lora = read_lora(path, checkpoint, {.allow_unknown = true});
  ASSERT_EQ(lora.modules.size(), 1u);
  EXPECT_EQ(lora.modules[0].weight_key, "mid_block.attentions.0.proj_in.weight");
  EXPECT_EQ(lora.unknown_keys.size(), 3u);
}

TEST_F(LoraTest, BadModulesAreNamed) {
  const auto checkpoint = tiny_checkpoint();
  const auto write = [&](const StateDict& t) {
    const auto path = dir_ / "bad.safetensors";
    save_safetensors(path, t);
    return error_of([&] { read_lora(path, checkpoint); });
  };
  const std::string name = "lora_unet_mid_block_attentions_0_proj_in";
  auto half = golden_subset({name});
  half.erase(name + ".lora_up.weight");
  EXPECT_NE(write(half).find(name + " has no lora_up"), std::string::npos) << write(half);

  auto misshaped = golden_subset({name});
  misshaped[name + ".lora_up.weight"] = torch::zeros({320, 4, 1, 1});
  EXPECT_NE(write(misshaped).find(
                name + ": lora_down [4,64,1,1] / lora_up [320,4,1,1] do not fit weight [64,64,1,1]"),
            std::string::npos)
      << write(misshaped);

  StateDict loha{{name + ".hada_w1_a", torch::zeros({64, 4})}, {name + ".alpha", torch::scalar_tensor(1.0)}};
  EXPECT_NE(write(loha).find("not a plain LoRA"), std::string::npos) << write(loha);
}

TEST_F(LoraTest, OtherToolsNamingResolvesToTheSameWeights) {
  const auto checkpoint = tiny_checkpoint();
  const std::string kohya_proj = "lora_unet_down_blocks_0_attentions_0_proj_in";
  const std::string kohya_q = "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_q";
  const std::string kohya_te = "lora_te_text_model_encoder_layers_0_self_attn_out_proj";
  const auto golden = golden_subset({kohya_proj, kohya_q, kohya_te});
  // ComfyUI's LDM module paths, PEFT lora_A / lora_B with no alpha (scale 1), and diffusers/PEFT
  // dotted names.
  StateDict other;
  other["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"] = golden.at(kohya_proj + ".lora_down.weight");
  other["lora_unet_input_blocks_1_1_proj_in.lora_up.weight"] = golden.at(kohya_proj + ".lora_up.weight");
  other["lora_unet_input_blocks_1_1_proj_in.alpha"] = golden.at(kohya_proj + ".alpha");
  other["unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q.lora_A.weight"] =
      golden.at(kohya_q + ".lora_down.weight");
  other["unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q.lora_B.weight"] =
      golden.at(kohya_q + ".lora_up.weight");
  other["base_model.model.text_encoder.text_model.encoder.layers.0.self_attn.out_proj.lora_A.weight"] =
      golden.at(kohya_te + ".lora_down.weight");
  other["base_model.model.text_encoder.text_model.encoder.layers.0.self_attn.out_proj.lora_B.weight"] =
      golden.at(kohya_te + ".lora_up.weight");
  const auto path = dir_ / "other.safetensors";
  save_safetensors(path, other);
  const auto lora = read_lora(path, checkpoint);
  ASSERT_EQ(lora.modules.size(), 3u);
  for (const auto& m : lora.modules) {
    if (m.name == kohya_proj) {
      EXPECT_EQ(m.weight_key, "down_blocks.0.attentions.0.proj_in.weight");
      EXPECT_EQ(m.alpha, 2.0);
    } else if (m.name == kohya_q) {
      EXPECT_EQ(m.weight_key, "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q.weight");
      EXPECT_EQ(m.alpha, 4.0);  // absent: alpha = rank
    } else {
      EXPECT_EQ(m.name, kohya_te);
      EXPECT_EQ(m.component, Component::TextEncoder);
      EXPECT_EQ(m.weight_key, "text_model.encoder.layers.0.self_attn.out_proj.weight");
    }
  }
  // Both names of one module in one file is an error, not a silent double merge.
  other["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"] =
      golden.at(kohya_proj + ".lora_down.weight");
  save_safetensors(path, other);
  const auto message = error_of([&] { read_lora(path, checkpoint); });
  EXPECT_NE(message.find("name the same module"), std::string::npos) << message;
}

TEST_F(LoraTest, LoConModulesResolveAndMergeAsKohyaConvs) {
  const auto checkpoint = tiny_checkpoint();
  // kohya name (diffusers path, or the LDM path ComfyUI accepts) -> the weight it must reach.
  const std::vector<std::pair<std::string, std::string>> modules = {
      {"lora_unet_down_blocks_0_resnets_0_conv1", "down_blocks.0.resnets.0.conv1.weight"},
      {"lora_unet_input_blocks_1_0_out_layers_3", "down_blocks.0.resnets.0.conv2.weight"},
      {"lora_unet_down_blocks_0_resnets_1_time_emb_proj", "down_blocks.0.resnets.1.time_emb_proj.weight"},
      {"lora_unet_down_blocks_1_resnets_0_conv_shortcut", "down_blocks.1.resnets.0.conv_shortcut.weight"},
      {"lora_unet_down_blocks_0_downsamplers_0_conv", "down_blocks.0.downsamplers.0.conv.weight"},
      {"lora_unet_up_blocks_1_upsamplers_0_conv", "up_blocks.1.upsamplers.0.conv.weight"},
      {"lora_unet_conv_in", "conv_in.weight"},
      {"lora_unet_out_2", "conv_out.weight"},
      {"lora_unet_time_embedding_linear_2", "time_embedding.linear_2.weight"},
      {"lora_unet_mid_block_resnets_1_conv2", "mid_block.resnets.1.conv2.weight"},
  };
  torch::manual_seed(3);
  StateDict tensors;
  for (const auto& [name, key] : modules) {
    const auto shape = checkpoint.unet.at(key).sizes();
    const int64_t r = 3;
    std::vector<int64_t> down_shape = {r, shape[1]}, up_shape = {shape[0], r};
    if (shape.size() == 4) {
      down_shape.insert(down_shape.end(), {shape[2], shape[3]});
      up_shape.insert(up_shape.end(), {1, 1});
    }
    tensors[name + ".lora_down.weight"] = torch::randn(down_shape) * 0.1;
    tensors[name + ".lora_up.weight"] = torch::randn(up_shape) * 0.1;
    tensors[name + ".alpha"] = torch::scalar_tensor(1.5);
  }
  const auto path = dir_ / "locon.safetensors";
  save_safetensors(path, tensors);
  const auto lora = read_lora(path, checkpoint);
  ASSERT_EQ(lora.modules.size(), modules.size());
  auto merged = checkpoint;
  merge_lora(merged, lora, 0.7);
  for (const auto& [name, key] : modules) {
    const auto it = std::find_if(lora.modules.begin(), lora.modules.end(),
                                 [&](const LoraModule& m) { return m.weight_key == key; });
    ASSERT_NE(it, lora.modules.end()) << name << " did not reach " << key;
    const auto down = tensors.at(name + ".lora_down.weight"), up = tensors.at(name + ".lora_up.weight");
    // kohya's own formulation for convs: conv2d(down^T, up)^T; a plain product for Linear.
    const auto product = down.dim() == 4 ? torch::conv2d(down.permute({1, 0, 2, 3}), up).permute({1, 0, 2, 3})
                                         : torch::mm(up, down);
    const auto expected = checkpoint.unet.at(key) + product * 0.7 * (1.5 / 3.0);
    EXPECT_TRUE(all_close(merged.unet.at(key), expected, {1e-6, 1e-6}, name));
  }
}

TEST_F(LoraTest, SaveReadRoundTripWithKohyaMetadataAndHashes) {
  const auto checkpoint = tiny_checkpoint();
  const auto lora = read_lora(golden_lora(), checkpoint);
  const auto path = dir_ / "copy.safetensors";
  save_lora(path, lora);
  const auto back = read_lora(path, checkpoint);
  ASSERT_EQ(back.modules.size(), lora.modules.size());
  for (size_t i = 0; i < lora.modules.size(); ++i) {
    const auto &a = lora.modules[i], &b = back.modules[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.weight_key, b.weight_key);
    EXPECT_EQ(a.alpha, b.alpha);
    EXPECT_TRUE(torch::equal(a.down, b.down)) << a.name;
    EXPECT_TRUE(torch::equal(a.up, b.up)) << a.name;
  }
  // Bit-identical tensors to the golden kohya file, names included.
  const auto golden = SafeTensorsFile::open(golden_lora()), written = SafeTensorsFile::open(path);
  ASSERT_EQ(written.entries().size(), golden.entries().size());
  for (const auto& e : golden.entries()) {
    ASSERT_TRUE(written.contains(e.name)) << e.name;
    EXPECT_TRUE(torch::equal(written.tensor(e.name), golden.tensor(e.name))) << e.name;
    EXPECT_EQ(written.tensor(e.name).scalar_type(), golden.tensor(e.name).scalar_type()) << e.name;
  }
  const auto& meta = written.metadata();
  EXPECT_EQ(meta.at("ss_network_module"), "networks.lora");
  EXPECT_EQ(meta.at("ss_network_dim"), "4");
  EXPECT_EQ(meta.at("ss_network_alpha"), "2.0");
  EXPECT_EQ(meta.at("ss_base_model_version"), "sd_v1");
  EXPECT_EQ(meta.at("description"), lora.metadata.at("description"));  // the file's own metadata is kept
  const auto bytes = written.bytes();
  EXPECT_EQ(meta.at("sshs_model_hash"), sha256_bytes(bytes.substr(8 + written.header().header_length)));
  EXPECT_EQ(meta.at("sshs_legacy_hash").size(), 8u);
  EXPECT_FALSE(fs::exists(path.string() + ".kiln-hash.tmp"));

  // fp16: weights stored in half, alpha kept in F32, and a mixed-rank file says "Dynamic".
  auto mixed = lora;
  mixed.modules[0].down = mixed.modules[0].down.slice(0, 0, 2);
  mixed.modules[0].up = mixed.modules[0].up.slice(1, 0, 2);
  save_lora(path, mixed, torch::kHalf);
  const auto half = SafeTensorsFile::open(path);
  EXPECT_EQ(half.tensor(lora.modules[1].name + ".lora_down.weight").scalar_type(), torch::kHalf);
  EXPECT_EQ(half.tensor(lora.modules[1].name + ".alpha").scalar_type(), torch::kFloat);
  EXPECT_EQ(half.metadata().at("ss_network_dim"), "Dynamic");
  EXPECT_EQ(read_lora(path, checkpoint).modules[0].rank(), 2);
}

TEST_F(LoraTest, ApplyToLoadedModelsEqualsMerge) {
  torch::NoGradGuard no_grad;
  const auto base = tiny_checkpoint();
  const auto lora = read_lora(golden_lora(), base);
  auto merged_checkpoint = base;
  merge_lora(merged_checkpoint, lora, 0.8);
  auto merged = build_models(merged_checkpoint);
  auto applied = build_models(base);
  apply_lora(applied, lora, 0.8);
  for (const auto& [name, t] : state_dict(*merged.unet))
    ASSERT_TRUE(torch::equal(state_dict(*applied.unet).at(name), t)) << name;
  for (const auto& [name, t] : state_dict(*merged.text_encoder))
    ASSERT_TRUE(torch::equal(state_dict(*applied.text_encoder).at(name), t)) << name;

  // And the outputs diffusers computed with the merged model.
  const auto golden = test::golden_file("lora_merged_outputs.safetensors");
  const auto te = applied.text_encoder->forward(golden.tensor("text_encoder.input_ids")).last_hidden_state;
  EXPECT_TRUE(all_close(te, golden.tensor("text_encoder.last_hidden_state"), test::kSingleForward, "te"));
  const auto out = applied.unet->forward(golden.tensor("unet.sample"), golden.tensor("unet.timestep"),
                                         golden.tensor("unet.encoder_hidden_states"));
  EXPECT_TRUE(all_close(out, golden.tensor("unet.out"), test::kSingleForward, "unet.out"));
  std::cout << "[ info ] applied LoRA vs diffusers merged model: te max abs "
            << test::max_abs_error(te, golden.tensor("text_encoder.last_hidden_state")) << ", unet max abs "
            << test::max_abs_error(out, golden.tensor("unet.out")) << "\n";

  // A LoRA that does not fit leaves the networks untouched.
  LoraFile bad = lora;
  bad.modules.back().weight_key = "no.such.weight";
  const auto before = state_dict(*applied.unet).at("mid_block.attentions.0.proj_in.weight").clone();
  EXPECT_NE(error_of([&] { apply_lora(applied, bad, 1.0); }).find("no.such.weight"), std::string::npos);
  EXPECT_TRUE(torch::equal(state_dict(*applied.unet).at("mid_block.attentions.0.proj_in.weight"), before));
}

// base + a known rank-2 ΔW on a few default targets (a 1x1 conv, linears in UNet and CLIP).
Checkpoint tuned_by_rank2(const Checkpoint& base,
                          const std::vector<std::pair<Component, std::string>>& keys) {
  auto tuned = base;
  torch::manual_seed(11);
  for (const auto& [c, key] : keys) {
    auto& w = tuned.component(c).at(key);
    const int64_t out = w.size(0), in = w.numel() / out;
    const auto delta = torch::mm(torch::randn({out, 2}), torch::randn({2, in})) * 0.05;
    w = w + delta.reshape(w.sizes());
  }
  return tuned;
}

const std::vector<std::pair<Component, std::string>> kTunedKeys = {
    {Component::UNet, "down_blocks.1.attentions.0.proj_in.weight"},
    {Component::UNet, "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"},
    {Component::UNet, "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"},
    {Component::TextEncoder, "text_model.encoder.layers.1.self_attn.v_proj.weight"},
};

TEST_F(LoraTest, ExtractRecoversALowRankDelta) {
  const auto base = tiny_checkpoint();
  const auto tuned = tuned_by_rank2(base, kTunedKeys);
  std::vector<double> energy;
  const auto lora = extract_lora(tuned, base, 4, &energy);
  ASSERT_EQ(lora.modules.size(), kTunedKeys.size());  // unchanged modules are skipped
  ASSERT_EQ(energy.size(), lora.modules.size());
  for (size_t i = 0; i < energy.size(); ++i) {
    EXPECT_NEAR(energy[i], 1.0, 1e-6) << lora.modules[i].name;
    EXPECT_EQ(lora.modules[i].alpha, 4.0);
    EXPECT_EQ(lora.modules[i].rank(), 4);
  }
  auto rebuilt = base;
  merge_lora(rebuilt, lora, 1.0);
  double worst = 0;
  for (const auto& [c, key] : kTunedKeys) {
    EXPECT_TRUE(all_close(rebuilt.component(c).at(key), tuned.component(c).at(key), {1e-5, 0}, key));
    worst = std::max(worst, test::max_abs_error(rebuilt.component(c).at(key), tuned.component(c).at(key)));
  }
  std::cout << "[ info ] extract rank 4 of a rank-2 delta, merged back: max abs error " << worst << "\n";
  // The file it makes reads back against the model.
  const auto path = dir_ / "extracted.safetensors";
  save_lora(path, lora);
  EXPECT_EQ(read_lora(path, base).modules.size(), kTunedKeys.size());
}

TEST_F(LoraTest, ExtractEnergyPredictsTheTruncationError) {
  const auto base = tiny_checkpoint();
  const auto tuned = tuned_by_rank2(base, kTunedKeys);
  std::vector<double> energy;
  const auto lora = extract_lora(tuned, base, 1, &energy);
  ASSERT_EQ(lora.modules.size(), kTunedKeys.size());
  auto rebuilt = base;
  merge_lora(rebuilt, lora, 1.0);
  for (size_t i = 0; i < lora.modules.size(); ++i) {
    const auto& m = lora.modules[i];
    const auto delta = tuned.component(m.component).at(m.weight_key).to(torch::kDouble) -
                       base.component(m.component).at(m.weight_key).to(torch::kDouble);
    const auto residual = tuned.component(m.component).at(m.weight_key).to(torch::kDouble) -
                          rebuilt.component(m.component).at(m.weight_key).to(torch::kDouble);
    const double predicted = (1.0 - energy[i]) * delta.square().sum().item<double>();
    const double actual = residual.square().sum().item<double>();
    EXPECT_LT(energy[i], 0.99) << m.name;  // rank 1 of a rank-2 delta loses something
    EXPECT_NEAR(actual / predicted, 1.0, 1e-4) << m.name;
  }
}

TEST_F(LoraTest, ExtractRefusesAnotherArchitecture) {
  const auto base = tiny_checkpoint();
  auto other = base;
  other.unet.at("down_blocks.0.attentions.0.proj_in.weight") = torch::zeros({16, 32, 1, 1});
  const auto message = error_of([&] { extract_lora(other, base, 4); });
  EXPECT_NE(message.find("not the same architecture"), std::string::npos) << message;
}

TEST(LoraSpec, ParsesOptionalRatio) {
  EXPECT_EQ(parse_lora_spec("a.safetensors").path, "a.safetensors");
  EXPECT_EQ(parse_lora_spec("a.safetensors").ratio, 1.0);
  EXPECT_EQ(parse_lora_spec("dir/a.safetensors:0.8").ratio, 0.8);
  EXPECT_EQ(parse_lora_spec("dir/a.safetensors:0.8").path, "dir/a.safetensors");
  EXPECT_EQ(parse_lora_spec("a.safetensors:-1.5").ratio, -1.5);
  EXPECT_EQ(parse_lora_spec("odd:name.safetensors").path, "odd:name.safetensors");
  EXPECT_EQ(parse_lora_spec("odd:name.safetensors").ratio, 1.0);
}

// ---- the command line ----

using test::run_kiln;

std::string config_arg() { return "--config " + test::tiny_config_path().string(); }

TEST_F(LoraTest, CliMergeEqualsGoldenAndExtractRecoversIt) {
  const auto merged = dir_ / "merged.safetensors";
  auto r = run_kiln("lora merge " + test::tiny_model_path().string() + " " + golden_lora().string() +
                    ":0.8 --out " + merged.string() + " " + config_arg());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(210 modules)"), std::string::npos) << r.output;
  const auto golden = test::golden_file("lora_merged_at_0.8.safetensors");
  const auto file = SafeTensorsFile::open(merged), original = SafeTensorsFile::open(test::tiny_model_path());
  ASSERT_EQ(file.entries().size(), original.entries().size());
  for (const auto& e : original.entries()) {
    ASSERT_TRUE(file.contains(e.name)) << e.name;
    if (golden.contains(e.name))
      EXPECT_TRUE(all_close(file.tensor(e.name), golden.tensor(e.name), kMergeTolerance, e.name));
    else
      EXPECT_TRUE(torch::equal(file.tensor(e.name), original.tensor(e.name))) << e.name;
  }

  // The golden delta has rank 4 per module: extracting at rank 4 keeps all of it.
  const auto extracted = dir_ / "extracted.safetensors";
  r = run_kiln("lora extract " + merged.string() + " " + test::tiny_model_path().string() +
               " --rank 4 --out " + extracted.string() + " " + config_arg());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("210 modules (192 unet, 18 text encoder) at rank 4"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("retained energy: mean 1.000000, min 1.000000"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("wrote " + extracted.string()), std::string::npos) << r.output;
  const auto lora = read_lora(extracted, tiny_checkpoint());
  EXPECT_EQ(lora.modules.size(), 210u);
  EXPECT_EQ(SafeTensorsFile::open(extracted).metadata().at("ss_network_dim"), "4");

  r = run_kiln("lora merge " + test::tiny_model_path().string() + " " + test::tiny_model_path().string() +
               " --out " + (dir_ / "x.safetensors").string() + " " + config_arg());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("match no weight of the model"), std::string::npos) << r.output;
}

TEST_F(LoraTest, CliSampleWithLora) {
  const std::string args = "sample --model " + test::tiny_model_path().string() + " " + config_arg() +
                           " -W 64 -H 64 --steps 2 --seed 3 --prompt 'a red circle' --out ";
  auto plain = run_kiln(args + (dir_ / "plain").string());
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  auto with = run_kiln(args + (dir_ / "lora").string() + " --lora " + golden_lora().string() + ":0.8");
  ASSERT_EQ(with.exit_code, 0) << with.output;
  EXPECT_NE(with.output.find("applied LoRA " + golden_lora().string() + " at 0.8"), std::string::npos)
      << with.output;
  std::ifstream a(dir_ / "plain" / "00000-3.png", std::ios::binary),
      b(dir_ / "lora" / "00000-3.png", std::ios::binary);
  const std::string pa((std::istreambuf_iterator<char>(a)), {}), pb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_FALSE(pa.empty());
  EXPECT_NE(pa, pb);  // the LoRA changes the picture

  auto missing = run_kiln(args + (dir_ / "bad").string() + " --lora " + (dir_ / "nope.safetensors").string());
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("nope.safetensors"), std::string::npos) << missing.output;
}

}  // namespace
}  // namespace kiln
