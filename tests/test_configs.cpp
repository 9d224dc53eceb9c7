// Model configs: diffusers config.json files read into the plain structs, written back, and refused
// when they describe something kiln cannot run.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "models/configs.h"
#include "util/error.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

const fs::path kTinyConfigs = fs::path(KILN_GOLDEN_DIR) / "tiny-sd" / "diffusers-configs";

void expect_same(const ModelConfigs& a, const ModelConfigs& b) {
  EXPECT_EQ(to_json(a.unet), to_json(b.unet));
  EXPECT_EQ(to_json(a.text_encoder), to_json(b.text_encoder));
  EXPECT_EQ(to_json(a.vae), to_json(b.vae));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Configs, TinyDiffusersFolderIsTheTinyArchitecture) {
  expect_same(read_model_configs(kTinyConfigs), tiny_configs());
}

TEST(Configs, SingleComponentFileChangesOnlyThatComponent) {
  auto configs = read_model_configs(kTinyConfigs / "unet" / "config.json");
  EXPECT_EQ(configs.unet.block_out_channels, (std::vector<int64_t>{32, 64, 64, 64}));
  EXPECT_EQ(configs.unet.num_attention_heads, (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(configs.text_encoder.hidden_size, 768);  // untouched SD 1.5 default
  EXPECT_EQ(configs.vae.block_out_channels, (std::vector<int64_t>{128, 256, 512, 512}));
}

TEST(Configs, JsonRoundTrip) {
  for (const auto& c : {sd15_configs(), tiny_configs()}) {
    ModelConfigs back;
    back.unet = unet_config_from_json(to_json(c.unet), "test");
    back.text_encoder = clip_text_config_from_json(to_json(c.text_encoder), "test");
    back.vae = vae_config_from_json(to_json(c.vae), "test");
    expect_same(back, c);
  }
}

TEST(Configs, PerBlockHeadCountsAndNumAttentionHeadsWin) {
  auto j = to_json(sd15_configs().unet);
  j["num_attention_heads"] = {5, 10, 20, 20};
  EXPECT_EQ(unet_config_from_json(j, "x").num_attention_heads, (std::vector<int64_t>{5, 10, 20, 20}));
}

TEST(Configs, RejectsWhatKilnCannotRun) {
  auto sd2 = to_json(sd15_configs().unet);
  sd2["use_linear_projection"] = true;
  EXPECT_NE(error_of([&] { unet_config_from_json(sd2, "sd2/unet/config.json"); }).find("SD 2.x"),
            std::string::npos);
  auto sdxl = to_json(sd15_configs().unet);
  sdxl["addition_embed_type"] = "text_time";
  EXPECT_NE(error_of([&] { unet_config_from_json(sdxl, "xl.json"); }).find("SDXL"), std::string::npos);
  auto odd_block = to_json(sd15_configs().unet);
  odd_block["down_block_types"][0] = "AttnDownBlock2D";
  EXPECT_NE(error_of([&] { unet_config_from_json(odd_block, "odd.json"); }).find("AttnDownBlock2D"),
            std::string::npos);
  nlohmann::json bad_type = {{"hidden_size", "wide"}};
  EXPECT_NE(error_of([&] { clip_text_config_from_json(bad_type, "te.json"); }).find("te.json"),
            std::string::npos);
}

TEST(Configs, BadFilesNameThemselves) {
  const fs::path dir = fs::temp_directory_path() / ("kiln-configs-" + std::to_string(::getpid()));
  fs::create_directories(dir / "unet");
  { std::ofstream(dir / "unet" / "config.json") << "{ not json"; }
  auto message = error_of([&] { read_model_configs(dir); });
  EXPECT_NE(message.find((dir / "unet" / "config.json").string()), std::string::npos) << message;
  EXPECT_NE(message.find("JSON"), std::string::npos) << message;
  { std::ofstream(dir / "other.json") << R"({"_class_name": "ControlNetModel"})"; }
  message = error_of([&] { read_model_configs(dir / "other.json"); });
  EXPECT_NE(message.find("ControlNetModel"), std::string::npos) << message;
  message = error_of([&] { read_model_configs(dir / "missing"); });
  EXPECT_NE(message.find("does not exist"), std::string::npos) << message;
  fs::remove_all(dir);
}

TEST(Configs, EqualityAndEveryComponentFile) {
  EXPECT_EQ(read_model_configs(kTinyConfigs), tiny_configs());
  EXPECT_NE(tiny_configs(), sd15_configs());
  const auto te = read_model_configs(kTinyConfigs / "text_encoder" / "config.json");
  EXPECT_EQ(te.text_encoder, tiny_configs().text_encoder);
  EXPECT_EQ(te.unet, sd15_configs().unet);
  const auto vae = read_model_configs(kTinyConfigs / "vae" / "config.json");
  EXPECT_EQ(vae.vae, tiny_configs().vae);
  EXPECT_EQ(vae.text_encoder, sd15_configs().text_encoder);
  // The base passed in is what components without a file keep.
  const auto on_tiny = read_model_configs(kTinyConfigs / "unet" / "config.json", tiny_configs());
  EXPECT_EQ(on_tiny, tiny_configs());
}

TEST(Configs, Sd15ValuesFromTheSpec) {
  const auto c = sd15_configs();
  EXPECT_EQ(c.unet.block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280}));
  EXPECT_EQ(c.unet.num_attention_heads, (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(c.unet.cross_attention_dim, 768);
  EXPECT_EQ(c.text_encoder.num_attention_heads, 12);
  EXPECT_EQ(c.text_encoder.intermediate_size, 3072);
  EXPECT_EQ(c.vae.block_out_channels, (std::vector<int64_t>{128, 256, 512, 512}));
  EXPECT_DOUBLE_EQ(c.vae.scaling_factor, 0.18215);
  // SD 1.5's config.json says attention_head_dim: 8 and means 8 heads.
  const auto j = to_json(c.unet);
  EXPECT_EQ(j["attention_head_dim"], 8);
  EXPECT_EQ(j["down_block_types"][3], "DownBlock2D");
  EXPECT_EQ(j["up_block_types"][0], "UpBlock2D");
}

TEST(Configs, RejectsNonSd1UNetOptions) {
  const std::pair<const char*, nlohmann::json> cases[] = {
      {"transformer_layers_per_block", {1, 2, 10, 10}},
      {"transformer_layers_per_block", 2},
      {"class_embed_type", "timestep"},
      {"num_class_embeds", 10},
      {"time_cond_proj_dim", 256},
      {"encoder_hid_dim_type", "text_proj"},
      {"only_cross_attention", true},
      {"only_cross_attention", {false, true, false, false}},
      {"resnet_time_scale_shift", "scale_shift"},
      {"mid_block_type", "UNetMidBlock2DSimpleCrossAttn"},
      {"time_embedding_type", "fourier"},
      {"conv_in_kernel", 7},
      {"act_fn", "gelu"},
      {"center_input_sample", true},
      {"attention_type", "gated"},
  };
  for (const auto& [key, value] : cases) {
    auto j = to_json(sd15_configs().unet);
    j[key] = value;
    const auto message = error_of([&] { unet_config_from_json(j, "u.json"); });
    EXPECT_NE(message.find("u.json: "), std::string::npos) << key << ": " << message;
    EXPECT_NE(message.find(key), std::string::npos) << key << ": " << message;
  }
  // SD 1.x values of the same options are fine (the tiny config lists them all).
  auto j = to_json(sd15_configs().unet);
  j["transformer_layers_per_block"] = 1;
  j["only_cross_attention"] = false;
  j["class_embed_type"] = nullptr;
  j["upcast_attention"] = true;  // only changes fp16 numerics; kiln's attention is fp32
  EXPECT_EQ(unet_config_from_json(j, "ok.json"), sd15_configs().unet);
}

TEST(Configs, RejectsInconsistentSizes) {
  auto heads = to_json(sd15_configs().unet);
  heads["attention_head_dim"] = 7;  // 320 is not a multiple of 7
  EXPECT_NE(error_of([&] { unet_config_from_json(heads, "h.json"); }).find("head count"), std::string::npos);
  auto groups = to_json(tiny_configs().unet);
  groups["block_out_channels"] = {32, 48, 64, 64};  // 48 is not a multiple of 32 groups
  EXPECT_NE(error_of([&] { unet_config_from_json(groups, "g.json"); }).find("norm_num_groups"),
            std::string::npos);
  auto lengths = to_json(sd15_configs().unet);
  lengths["block_out_channels"] = {320, 640, 1280};
  EXPECT_NE(error_of([&] { unet_config_from_json(lengths, "l.json"); }).find("disagree"), std::string::npos);
  auto negative = to_json(sd15_configs().unet);
  negative["in_channels"] = -4;
  EXPECT_NE(error_of([&] { unet_config_from_json(negative, "n.json"); }).find("positive"), std::string::npos);

  auto no_heads = to_json(sd15_configs().text_encoder);
  no_heads["num_attention_heads"] = 0;
  EXPECT_NE(error_of([&] { clip_text_config_from_json(no_heads, "t.json"); }).find("positive"),
            std::string::npos);
  auto uneven = to_json(sd15_configs().text_encoder);
  uneven["num_attention_heads"] = 7;
  EXPECT_NE(error_of([&] { clip_text_config_from_json(uneven, "t.json"); }).find("multiple"),
            std::string::npos);
  auto act = to_json(sd15_configs().text_encoder);
  act["hidden_act"] = "relu";
  EXPECT_NE(error_of([&] { clip_text_config_from_json(act, "t.json"); }).find("relu"), std::string::npos);

  auto block = to_json(sd15_configs().vae);
  block["down_block_types"][1] = "AttnDownEncoderBlock2D";
  EXPECT_NE(error_of([&] { vae_config_from_json(block, "v.json"); }).find("AttnDownEncoderBlock2D"),
            std::string::npos);
  auto quant = to_json(sd15_configs().vae);
  quant["use_quant_conv"] = false;
  EXPECT_NE(error_of([&] { vae_config_from_json(quant, "v.json"); }).find("use_quant_conv"),
            std::string::npos);
  auto shift = to_json(sd15_configs().vae);
  shift["shift_factor"] = 0.0609;
  EXPECT_NE(error_of([&] { vae_config_from_json(shift, "v.json"); }).find("shift_factor"), std::string::npos);
  auto vae_groups = to_json(sd15_configs().vae);
  vae_groups["norm_num_groups"] = 48;
  EXPECT_NE(error_of([&] { vae_config_from_json(vae_groups, "v.json"); }).find("norm_num_groups"),
            std::string::npos);
}

TEST(Configs, FolderWithoutConfigsIsNamed) {
  const fs::path dir = fs::temp_directory_path() / ("kiln-configs-empty-" + std::to_string(::getpid()));
  fs::create_directories(dir / "unet");
  const auto message = error_of([&] { read_model_configs(dir); });
  EXPECT_NE(message.find(dir.string()), std::string::npos) << message;
  EXPECT_NE(message.find("no unet/, text_encoder/ or vae/ config.json"), std::string::npos) << message;
  { std::ofstream(dir / "array.json") << "[1, 2]"; }
  EXPECT_NE(error_of([&] { read_model_configs(dir / "array.json"); }).find("not a JSON object"),
            std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
