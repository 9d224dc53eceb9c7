// Checkpoint layouts on the tiny golden model: reading the LDM file, writing the diffusers folder
// (checked name-for-name against keymap.json and, where ../shared is present, bit-for-bit against
// the folder diffusers wrote), bit-exact round trips, and clear errors for bad input.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "golden_compare.h"
#include "io/checkpoint.h"
#include "models/model_loading.h"
#include "util/error.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kiln-ckpt-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The message of the kiln::Error `f` throws ("" if none).
  static std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

bool same_tensors(const StateDict& a, const StateDict& b, std::string* why) {
  if (a.size() != b.size()) {
    *why = "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
    return false;
  }
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || t.scalar_type() != it->second.scalar_type() || !torch::equal(t, it->second)) {
      *why = name;
      return false;
    }
  }
  return true;
}

TEST_F(CheckpointTest, ReadsTheTinyLdmFile) {
  const auto ckpt = read_checkpoint(test::tiny_model_path());
  EXPECT_EQ(ckpt.layout, CheckpointLayout::Ldm);
  EXPECT_EQ(ckpt.unet.size(), 684u);
  EXPECT_EQ(ckpt.text_encoder.size(), 52u);  // position_ids is a buffer, regenerated on write
  EXPECT_EQ(ckpt.vae.size(), 244u);
  EXPECT_TRUE(ckpt.extra.empty());
  EXPECT_FALSE(ckpt.configs_complete);  // tiny widths: head counts are not in the shapes
  EXPECT_EQ(ckpt.configs.unet.block_out_channels, tiny_configs().unet.block_out_channels);
  EXPECT_EQ(ckpt.configs.unet.cross_attention_dim, 32);
  EXPECT_EQ(ckpt.configs.text_encoder.num_hidden_layers, 3);
  EXPECT_EQ(ckpt.configs.vae.block_out_channels, tiny_configs().vae.block_out_channels);
  EXPECT_EQ(ckpt.vae.at("encoder.mid_block.attentions.0.to_q.weight").dim(), 2);
  EXPECT_NE(error_of([&] { build_models(ckpt); }).find("--config"), std::string::npos);

  const auto with_config = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  EXPECT_TRUE(with_config.configs_complete);
  EXPECT_EQ(to_json(with_config.configs.unet), to_json(tiny_configs().unet));
  EXPECT_EQ(to_json(with_config.configs.text_encoder), to_json(tiny_configs().text_encoder));
}

TEST_F(CheckpointTest, DiffusersFolderMatchesKeymapAndReference) {
  const auto ckpt = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  const auto folder = dir_ / "tiny";
  write_checkpoint(ckpt, folder, CheckpointLayout::Diffusers);
  for (const char* f :
       {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "unet/config.json", "text_encoder/config.json", "vae/config.json"})
    EXPECT_TRUE(fs::exists(folder / f)) << f;

  std::ifstream in(test::golden_dir() / "tiny-sd" / "keymap.json");
  const auto keymap = nlohmann::json::parse(in);
  const auto ldm = SafeTensorsFile::open(test::tiny_model_path());
  std::map<std::string, size_t> per_file;
  for (const auto& t : keymap["tensors"]) {
    if (t["diffusers_file"].is_null()) continue;
    const std::string file = t["diffusers_file"], name = t["diffusers_name"];
    const auto written = SafeTensorsFile::open(folder / file);
    ASSERT_TRUE(written.contains(name)) << file << ": " << name;
    const auto tensor = written.tensor(name);
    EXPECT_EQ(tensor.sizes().vec(), t["diffusers_shape"].get<std::vector<int64_t>>()) << name;
    EXPECT_TRUE(torch::equal(tensor, ldm.tensor(t["ldm_name"]).reshape(tensor.sizes()))) << name;
    ++per_file[file];
  }
  for (const auto& [file, count] : per_file)
    EXPECT_EQ(SafeTensorsFile::open(folder / file).entries().size(), count);

  // Where ../shared is beside the checkout (developers, CI), compare with the folder diffusers wrote.
  const fs::path reference = fs::path(KILN_SOURCE_DIR) / ".." / "shared" / "golden" / "tiny-sd" / "diffusers";
  if (!fs::exists(reference)) GTEST_SKIP() << "no reference diffusers folder at " << reference;
  for (auto c : {Component::UNet, Component::TextEncoder, Component::VAE}) {
    const auto ours = SafeTensorsFile::open(folder / diffusers_weights_file(c)).tensors();
    const auto theirs = SafeTensorsFile::open(reference / diffusers_weights_file(c)).tensors();
    std::string why;
    EXPECT_TRUE(same_tensors(ours, theirs, &why)) << component_name(c) << ": " << why;
  }
  const auto reread = read_model_configs(folder);
  EXPECT_EQ(to_json(reread.unet), to_json(tiny_configs().unet));
}

TEST_F(CheckpointTest, LdmDiffusersLdmIsBitExact) {
  for (const auto& [dtype, name] : {std::pair{torch::kFloat32, "fp32"}, std::pair{torch::kFloat16, "fp16"},
                                    std::pair{torch::kBFloat16, "bf16"}}) {
    const auto start = dir_ / (std::string(name) + ".safetensors");
    write_checkpoint(read_checkpoint(test::tiny_model_path(), test::tiny_config_path()), start,
                     CheckpointLayout::Ldm, dtype);
    const auto folder = dir_ / (std::string(name) + "-diffusers");
    write_checkpoint(read_checkpoint(start, test::tiny_config_path()), folder, CheckpointLayout::Diffusers);
    const auto back = dir_ / (std::string(name) + "-back.safetensors");
    write_checkpoint(read_checkpoint(folder), back, CheckpointLayout::Ldm);
    std::string why;
    EXPECT_TRUE(
        same_tensors(SafeTensorsFile::open(start).tensors(), SafeTensorsFile::open(back).tensors(), &why))
        << name << ": " << why;
    const auto file = SafeTensorsFile::open(back);
    EXPECT_EQ(file.tensor("model.diffusion_model.out.2.weight").scalar_type(), dtype);
    EXPECT_TRUE(torch::equal(file.tensor(std::string(kLdmPositionIdsKey)),
                             torch::arange(77, torch::kLong).unsqueeze(0)));
  }
  // And fp32 -> ldm keeps every original tensor bit-for-bit.
  const auto same = dir_ / "same.safetensors";
  write_checkpoint(read_checkpoint(test::tiny_model_path()), same, CheckpointLayout::Ldm);
  std::string why;
  EXPECT_TRUE(same_tensors(SafeTensorsFile::open(test::tiny_model_path()).tensors(),
                           SafeTensorsFile::open(same).tensors(), &why))
      << why;
}

TEST_F(CheckpointTest, HalfPrecisionFilesLoadIntoFp32Modules) {
  const auto half = dir_ / "half.safetensors";
  write_checkpoint(read_checkpoint(test::tiny_model_path()), half, CheckpointLayout::Ldm, torch::kFloat16);
  auto models = build_models(read_checkpoint(half, test::tiny_config_path()));
  const auto& w = models.unet->conv_in->weight;
  EXPECT_EQ(w.scalar_type(), torch::kFloat32);
  const auto original = read_checkpoint(test::tiny_model_path()).unet.at("conv_in.weight");
  EXPECT_TRUE(torch::equal(w, original.to(torch::kFloat16).to(torch::kFloat32)));
}

TEST_F(CheckpointTest, ExtraTensorsSurviveLdmToLdm) {
  auto ckpt = read_checkpoint(test::tiny_model_path());
  ckpt.extra["alphas_cumprod"] = torch::linspace(1, 0, 1000);
  ckpt.metadata["note"] = "kept";
  const auto out = dir_ / "extra.safetensors";
  write_checkpoint(ckpt, out, CheckpointLayout::Ldm);
  const auto back = read_checkpoint(out);
  ASSERT_EQ(back.extra.size(), 1u);
  EXPECT_TRUE(torch::equal(back.extra.at("alphas_cumprod"), ckpt.extra.at("alphas_cumprod")));
  EXPECT_EQ(back.metadata.at("note"), "kept");
}

TEST_F(CheckpointTest, BadInputIsNamed) {
  const auto missing = dir_ / "missing.safetensors";
  auto message = error_of([&] { read_checkpoint(missing); });
  EXPECT_NE(message.find(missing.string()), std::string::npos) << message;

  fs::create_directories(dir_ / "empty");
  message = error_of([&] { read_checkpoint(dir_ / "empty"); });
  EXPECT_NE(message.find("not a diffusers model"), std::string::npos) << message;

  fs::create_directories(dir_ / "unet_only");
  { std::ofstream(dir_ / "unet_only" / "config.json") << "{}"; }
  message = error_of([&] { read_checkpoint(dir_ / "unet_only"); });
  EXPECT_NE(message.find("single diffusers component"), std::string::npos) << message;

  const auto truncated = dir_ / "truncated.safetensors";
  fs::copy_file(test::tiny_model_path(), truncated);
  fs::resize_file(truncated, 1000000);
  message = error_of([&] { read_checkpoint(truncated); });
  EXPECT_NE(message.find(truncated.string()), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;

  const auto sd2 = dir_ / "sd2.safetensors";
  save_safetensors(sd2, {{"cond_stage_model.model.token_embedding.weight", torch::zeros({4, 4})}});
  message = error_of([&] { read_checkpoint(sd2); });
  EXPECT_NE(message.find("SD 2.x"), std::string::npos) << message;

  const auto sdxl = dir_ / "sdxl.safetensors";
  save_safetensors(
      sdxl, {{"conditioner.embedders.0.transformer.text_model.final_layer_norm.bias", torch::zeros({4})}});
  message = error_of([&] { read_checkpoint(sdxl); });
  EXPECT_NE(message.find("SDXL"), std::string::npos) << message;

  const auto pickle = dir_ / "model.ckpt";
  { std::ofstream(pickle) << "not really a pickle"; }
  message = error_of([&] { read_checkpoint(pickle); });
  EXPECT_NE(message.find("pickled"), std::string::npos) << message;

  const auto nothing = dir_ / "nothing.safetensors";
  save_safetensors(nothing, {{"alphas_cumprod", torch::zeros({1000})}});
  message = error_of([&] { read_checkpoint(nothing); });
  EXPECT_NE(message.find("no SD 1.x tensors"), std::string::npos) << message;
}

TEST_F(CheckpointTest, MissingAndMisshapedTensorsAreListedAndNothingLoads) {
  auto ckpt = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  ckpt.unet.erase("conv_out.bias");
  ckpt.unet["conv_in.weight"] = torch::zeros({7, 4, 3, 3});
  ckpt.unet["stray.weight"] = torch::zeros({1});
  const auto message = error_of([&] { build_models(ckpt); });
  EXPECT_NE(message.find("missing: conv_out.bias"), std::string::npos) << message;
  EXPECT_NE(message.find("unexpected: stray.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("mis-shaped: conv_in.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("(unet)"), std::string::npos) << message;

  UNet2DConditionModel unet(tiny_configs().unet);
  const auto before = unet->conv_out->weight.clone();
  auto partial = ckpt.unet;
  partial.erase("conv_in.weight");
  EXPECT_THROW(load_state_dict(*unet, partial, "partial"), Error);
  EXPECT_TRUE(torch::equal(unet->conv_out->weight, before));  // nothing copied
}

// Writes `tensors` under LDM names after applying `edit` to the tiny file's tensors.
fs::path edited_tiny_copy(const fs::path& out, const std::function<void(StateDict&)>& edit) {
  StateDict tensors = SafeTensorsFile::open(test::tiny_model_path()).tensors();
  edit(tensors);
  save_safetensors(out, tensors);
  return out;
}

std::string component_file_name(Component c) { return diffusers_weights_file(c).string(); }

TEST_F(CheckpointTest, ConfigsFromTinyFileWithConfigAreTinyConfigs) {
  const auto ckpt = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  EXPECT_EQ(ckpt.configs, tiny_configs());
  EXPECT_EQ(ckpt.architecture, "sd1x-custom");
  EXPECT_EQ(detect_layout(test::tiny_model_path()), CheckpointLayout::Ldm);
  // A single component config.json settles only that component.
  const auto unet_only =
      read_checkpoint(test::tiny_model_path(), test::tiny_config_path() / "unet" / "config.json");
  EXPECT_EQ(unet_only.configs.unet, tiny_configs().unet);
  EXPECT_FALSE(unet_only.configs_complete);
  // Without a config, the widths come from the shapes; head counts stay unknown.
  const auto inferred = read_checkpoint(test::tiny_model_path());
  EXPECT_EQ(inferred.configs.unet.block_out_channels, tiny_configs().unet.block_out_channels);
  EXPECT_EQ(inferred.configs.unet.down_block_has_attention, tiny_configs().unet.down_block_has_attention);
  EXPECT_EQ(inferred.configs.unet.up_block_has_attention, tiny_configs().unet.up_block_has_attention);
  EXPECT_EQ(inferred.configs.unet.layers_per_block, 2);
  EXPECT_EQ(inferred.configs.text_encoder.vocab_size, 49408);
  EXPECT_EQ(inferred.configs.text_encoder.hidden_size, 32);
  EXPECT_EQ(inferred.configs.text_encoder.intermediate_size, 64);
  EXPECT_EQ(inferred.configs.text_encoder.max_position_embeddings, 77);
  EXPECT_EQ(inferred.configs.vae.latent_channels, 4);
  EXPECT_NE(inferred.architecture.find("--config"), std::string::npos);
  const auto message = error_of([&] { write_checkpoint(inferred, dir_ / "x", CheckpointLayout::Diffusers); });
  EXPECT_NE(message.find(std::string(kHeadCountsUnknown)), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(dir_ / "x"));
  // LDM -> LDM needs no head counts.
  write_checkpoint(inferred, dir_ / "y.safetensors", CheckpointLayout::Ldm);
}

TEST_F(CheckpointTest, ConfigThatContradictsTheTensorsIsRejected) {
  const auto config = dir_ / "sd15-unet.json";
  { std::ofstream(config) << to_json(sd15_configs().unet).dump(); }
  const auto message = error_of([&] { read_checkpoint(test::tiny_model_path(), config); });
  EXPECT_NE(message.find(test::tiny_model_path().string()), std::string::npos) << message;
  EXPECT_NE(
      message.find(
          "unet config says block_out_channels = [320,640,1280,1280] but the tensors have [32,64,64,64]"),
      std::string::npos)
      << message;
}

// Shapes alone settle SD 1.5 (widths equal to SD 1.5's -> its head counts); nothing else.
TEST_F(CheckpointTest, Sd15WidthsGiveSd15Configs) {
  std::ifstream in(test::golden_dir() / "manifests" / "sd15-diffusers-keys.json");
  const auto manifest = nlohmann::json::parse(in);
  Checkpoint ckpt;
  ckpt.source = "sd15-shapes";
  for (const auto& t : manifest["tensors"]) {
    const std::string file = t["file"];
    const auto c = file.rfind("unet/", 0) == 0  ? Component::UNet
                   : file.rfind("vae/", 0) == 0 ? Component::VAE
                                                : Component::TextEncoder;
    // Meta tensors: shapes without 4 GB of memory.
    ckpt.component(c)[t["name"]] = torch::empty(t["shape"].get<std::vector<int64_t>>(), torch::kMeta);
  }
  bool complete = false;
  EXPECT_EQ(infer_configs(ckpt, &complete), sd15_configs());
  EXPECT_TRUE(complete);
  // One width off (a 1024-wide text context is SD 2.x's, but here only the shapes change): not SD 1.5.
  ckpt.text_encoder["text_model.encoder.layers.0.mlp.fc1.weight"] = torch::empty({2048, 768}, torch::kMeta);
  const auto other = infer_configs(ckpt, &complete);
  EXPECT_FALSE(complete);
  EXPECT_EQ(other.text_encoder.intermediate_size, 2048);
}

TEST_F(CheckpointTest, ReferenceDiffusersFolderEqualsTheLdmFile) {
  const fs::path reference = fs::path(KILN_SOURCE_DIR) / ".." / "shared" / "golden" / "tiny-sd" / "diffusers";
  if (!fs::exists(reference / "unet" / "diffusion_pytorch_model.safetensors"))
    GTEST_SKIP() << "no reference diffusers weights at " << reference;
  EXPECT_EQ(detect_layout(reference), CheckpointLayout::Diffusers);
  const auto folder = read_checkpoint(reference);
  const auto ldm = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  EXPECT_EQ(folder.layout, CheckpointLayout::Diffusers);
  EXPECT_TRUE(folder.configs_complete);
  EXPECT_EQ(folder.configs, tiny_configs());
  EXPECT_EQ(folder.unet.size(), 684u);
  EXPECT_EQ(folder.text_encoder.size(), 52u);
  EXPECT_EQ(folder.vae.size(), 244u);
  for (auto c : {Component::UNet, Component::TextEncoder, Component::VAE}) {
    std::string why;
    EXPECT_TRUE(same_tensors(folder.component(c), ldm.component(c), &why))
        << component_name(c) << ": " << why;
  }
  // diffusers -> LDM reproduces the reference LDM file bit for bit.
  write_checkpoint(folder, dir_ / "back.safetensors", CheckpointLayout::Ldm);
  std::string why;
  EXPECT_TRUE(same_tensors(SafeTensorsFile::open(test::tiny_model_path()).tensors(),
                           SafeTensorsFile::open(dir_ / "back.safetensors").tensors(), &why))
      << why;
}

TEST_F(CheckpointTest, WrittenFolderHasDiffusersFilesAndConfigs) {
  const auto ckpt = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  const auto folder = dir_ / "tiny";
  write_checkpoint(ckpt, folder / "", CheckpointLayout::Diffusers);  // a trailing separator names the folder
  EXPECT_EQ(detect_layout(folder), CheckpointLayout::Diffusers);
  auto read_json = [](const fs::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
  };
  const auto golden = test::tiny_config_path();
  EXPECT_EQ(read_json(folder / "scheduler" / "scheduler_config.json"),
            read_json(golden / "scheduler" / "scheduler_config.json"));
  const auto index = read_json(folder / "model_index.json");
  EXPECT_EQ(index["unet"], nlohmann::json::array({"diffusers", "UNet2DConditionModel"}));
  EXPECT_EQ(index["vae"], nlohmann::json::array({"diffusers", "AutoencoderKL"}));
  EXPECT_EQ(index["text_encoder"], nlohmann::json::array({"transformers", "CLIPTextModel"}));
  EXPECT_EQ(read_model_configs(folder), tiny_configs());
  EXPECT_EQ(SafeTensorsFile::open(folder / component_file_name(Component::UNet)).metadata().at("format"),
            "pt");
  // Nothing is left behind beside the folder.
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_)) ++entries;
  EXPECT_EQ(entries, 1u);

  // Rewriting over an existing diffusers folder replaces it; a different dtype is visible.
  write_checkpoint(ckpt, folder, CheckpointLayout::Diffusers, torch::kBFloat16);
  EXPECT_EQ(SafeTensorsFile::open(folder / component_file_name(Component::VAE))
                .tensor("decoder.conv_in.weight")
                .scalar_type(),
            torch::kBFloat16);

  // Older diffusers folders: fp16 variant file name, query/key/value/proj_attn, text encoder position_ids.
  StateDict vae = SafeTensorsFile::open(folder / component_file_name(Component::VAE)).tensors();
  StateDict legacy;
  for (const auto& [name, t] : vae) {
    std::string old = name;
    for (const auto& [now, before] : {std::pair{".to_q.", ".query."}, std::pair{".to_k.", ".key."},
                                      std::pair{".to_v.", ".value."}, std::pair{".to_out.0.", ".proj_attn."}})
      if (auto at = old.find(now); at != std::string::npos) old.replace(at, std::string(now).size(), before);
    legacy[old] = t;
  }
  fs::remove(folder / component_file_name(Component::VAE));
  save_safetensors(folder / "vae" / "diffusion_pytorch_model.fp16.safetensors", legacy);
  StateDict text = SafeTensorsFile::open(folder / component_file_name(Component::TextEncoder)).tensors();
  text["text_model.embeddings.position_ids"] = torch::arange(77, torch::kLong).unsqueeze(0);
  save_safetensors(folder / component_file_name(Component::TextEncoder), text);
  const auto old_style = read_checkpoint(folder);
  std::string why;
  EXPECT_TRUE(same_tensors(old_style.vae, vae, &why)) << why;
  EXPECT_EQ(old_style.text_encoder.size(), 52u);

  // Without vae/config.json the VAE's widths come from its shapes (not SD 1.5's: head counts are
  // not needed for a VAE, but the widths are unknown as an SD 1.5 config, so --config is asked for).
  fs::remove(folder / "vae" / "config.json");
  const auto partial = read_checkpoint(folder);
  EXPECT_EQ(partial.configs.vae.block_out_channels, tiny_configs().vae.block_out_channels);
  EXPECT_FALSE(partial.configs_complete);
  EXPECT_TRUE(read_checkpoint(folder, test::tiny_config_path()).configs_complete);
}

// A folder's scheduler config decides how it samples (diffusers' from_config): spacing and
// prediction type are read, kept through writing in either layout (an LDM file says v in its
// model-spec metadata), and what kiln cannot sample from is refused naming the file and the key.
TEST_F(CheckpointTest, SchedulerConfigIsReadKeptAndCheckedByKey) {
  const auto tiny = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  EXPECT_EQ(tiny.scheduler.timestep_spacing, "leading");
  EXPECT_EQ(tiny.scheduler.steps_offset, 1);
  EXPECT_EQ(tiny.scheduler.prediction, Prediction::Epsilon);
  EXPECT_EQ(read_checkpoint(test::tiny_model_path()).scheduler.timestep_spacing, "");  // an LDM file alone
  EXPECT_EQ(read_checkpoint(test::tiny_model_path()).metadata.count(std::string(kPredictionMetadataKey)), 0u);

  const fs::path configs = dir_ / "configs";
  fs::copy(test::tiny_config_path(), configs, fs::copy_options::recursive);
  const fs::path scheduler_file = configs / "scheduler" / "scheduler_config.json";
  nlohmann::json scheduler;
  std::ifstream(scheduler_file) >> scheduler;
  const auto write_scheduler = [&](const nlohmann::json& j) { std::ofstream(scheduler_file) << j.dump(2); };
  auto v = scheduler;
  v["prediction_type"] = "v_prediction";
  v["timestep_spacing"] = "trailing";
  write_scheduler(v);
  const auto v_model = read_checkpoint(test::tiny_model_path(), configs);
  EXPECT_EQ(v_model.scheduler.prediction, Prediction::V);
  EXPECT_EQ(v_model.scheduler.timestep_spacing, "trailing");
  write_checkpoint(v_model, dir_ / "v.safetensors", CheckpointLayout::Ldm);
  const auto ldm = read_checkpoint(dir_ / "v.safetensors");
  EXPECT_EQ(ldm.metadata.at(std::string(kPredictionMetadataKey)), "v");
  EXPECT_EQ(ldm.scheduler.prediction, Prediction::V);
  write_checkpoint(v_model, dir_ / "v-folder", CheckpointLayout::Diffusers);
  nlohmann::json written;
  std::ifstream(dir_ / "v-folder" / "scheduler" / "scheduler_config.json") >> written;
  EXPECT_EQ(written["prediction_type"], "v_prediction");
  EXPECT_EQ(written["timestep_spacing"], "trailing");
  EXPECT_EQ(read_checkpoint(dir_ / "v-folder").scheduler.prediction, Prediction::V);

  for (const auto& [key, value] : {std::pair{"beta_schedule", nlohmann::json("linear")},
                                   std::pair{"prediction_type", nlohmann::json("sample")},
                                   std::pair{"timestep_spacing", nlohmann::json("sideways")},
                                   std::pair{"steps_offset", nlohmann::json("one")}}) {
    auto bad = scheduler;
    bad[key] = value;
    write_scheduler(bad);
    const auto message = error_of([&] { read_checkpoint(test::tiny_model_path(), configs); });
    EXPECT_NE(message.find(scheduler_file.string()), std::string::npos) << message;
    EXPECT_NE(message.find(key), std::string::npos) << message;
  }
}

TEST_F(CheckpointTest, PartialCheckpointsKeepOnlyTheirComponents) {
  auto ckpt = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  ckpt.text_encoder.clear();
  ckpt.vae.clear();
  const auto out = dir_ / "unet-only.safetensors";
  write_checkpoint(ckpt, out, CheckpointLayout::Ldm, torch::kFloat16);
  const auto file = SafeTensorsFile::open(out);
  EXPECT_EQ(file.entries().size(), 684u);  // no position_ids without a text encoder
  const auto back = read_checkpoint(out, test::tiny_config_path());
  EXPECT_TRUE(back.has(Component::UNet));
  EXPECT_FALSE(back.has(Component::TextEncoder));
  EXPECT_FALSE(back.has(Component::VAE));
  EXPECT_TRUE(back.configs_complete);
  EXPECT_NE(error_of([&] { build_models(back); }).find("has no text_encoder weights"), std::string::npos);
}

TEST_F(CheckpointTest, MoreBadInputsNameTheFileAndTheProblem) {
  auto expect_error = [&](const fs::path& path, const std::string& part, const std::function<void()>& f) {
    const auto message = error_of(f);
    if (std::getenv("KILN_PRINT_ERRORS")) std::cout << message << "\n";
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find(part), std::string::npos) << "expected '" << part << "' in: " << message;
  };
  const auto tiny_config = test::tiny_config_path();

  // A tensor the architecture cannot be inferred without.
  const auto no_conv_in = edited_tiny_copy(dir_ / "no_conv_in.safetensors", [](StateDict& t) {
    t.erase("model.diffusion_model.input_blocks.0.0.weight");
  });
  expect_error(no_conv_in, "'conv_in.weight' is missing", [&] { read_checkpoint(no_conv_in); });

  // Missing and mis-shaped weights: named when the networks are loaded.
  const auto missing = edited_tiny_copy(dir_ / "missing_tensor.safetensors",
                                        [](StateDict& t) { t.erase("model.diffusion_model.out.2.bias"); });
  expect_error(missing, "missing: conv_out.bias",
               [&] { build_models(read_checkpoint(missing, tiny_config)); });
  const auto misshaped = edited_tiny_copy(dir_ / "misshaped.safetensors", [](StateDict& t) {
    t["model.diffusion_model.middle_block.0.in_layers.0.weight"] = torch::zeros({65});
  });
  expect_error(misshaped, "mis-shaped: mid_block.resnets.0.norm1.weight [65] (model [64])",
               [&] { build_models(read_checkpoint(misshaped, tiny_config)); });

  // A key under a component prefix that SD 1.x has no place for.
  const auto unknown = edited_tiny_copy(dir_ / "unknown.safetensors", [](StateDict& t) {
    t["model.diffusion_model.input_blocks.13.0.in_layers.0.weight"] = torch::zeros({1});
  });
  expect_error(unknown, "input_blocks.13.0.in_layers.0.weight", [&] { read_checkpoint(unknown); });

  // SD 2.x by shape: linear proj_in; 1024-wide context.
  const auto linear = edited_tiny_copy(dir_ / "sd2-linear.safetensors", [](StateDict& t) {
    t["model.diffusion_model.input_blocks.1.1.proj_in.weight"] = torch::zeros({32, 32});
  });
  expect_error(linear, "SD 2.x", [&] { read_checkpoint(linear); });
  const auto wide = edited_tiny_copy(dir_ / "sd2-context.safetensors", [](StateDict& t) {
    t["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] =
        torch::zeros({32, 1024});
  });
  expect_error(wide, "SD 2.x", [&] { read_checkpoint(wide); });
  const auto label = edited_tiny_copy(dir_ / "sdxl-label.safetensors", [](StateDict& t) {
    t["model.diffusion_model.label_emb.0.0.weight"] = torch::zeros({4, 4});
  });
  expect_error(label, "SDXL", [&] { read_checkpoint(label); });

  // A torch.save zip archive, whatever its name.
  const auto zip = dir_ / "disguised.safetensors";
  { std::ofstream(zip, std::ios::binary) << std::string("PK\x03\x04", 4) << std::string(100, '\0'); }
  expect_error(zip, "pickled", [&] { read_checkpoint(zip); });

  // A pickle that calls a function when unpickled (os.system via GLOBAL + REDUCE, protocol 2), bare
  // and under a harmless name: kiln refuses it from its first bytes and never interprets it.
  const auto marker = dir_ / "pickle-ran";
  const std::string payload = "touch " + marker.string();
  std::string hostile = std::string("\x80\x02", 2) + std::string("cos\nsystem\nq\0X", 14);
  for (int i = 0; i < 4; ++i) hostile += static_cast<char>((payload.size() >> (8 * i)) & 0xFF);
  hostile += payload + "\x85R.";
  for (const auto& name : {"hostile.ckpt", "hostile.safetensors"}) {
    { std::ofstream(dir_ / name, std::ios::binary) << hostile; }
    expect_error(dir_ / name, "", [&] { read_checkpoint(dir_ / name); });
  }
  expect_error(dir_ / "hostile.ckpt", "unpickling can run arbitrary code",
               [&] { read_checkpoint(dir_ / "hostile.ckpt"); });
  EXPECT_FALSE(fs::exists(marker));

  // Files that are not whole checkpoints.
  const auto lora = test::golden_dir() / "lora.safetensors";
  expect_error(lora, "LoRA", [&] { read_checkpoint(lora); });
  const auto unet_file = dir_ / "diffusion_pytorch_model.safetensors";
  save_safetensors(unet_file, {{"conv_in.weight", torch::zeros({1})},
                               {"down_blocks.0.resnets.0.conv1.weight", torch::zeros({1})}});
  expect_error(unet_file, "diffusers UNet weights file alone", [&] { detect_layout(unet_file); });

  // Diffusers folders: SDXL, pickled weights only, no weights at all, a weights file with foreign keys.
  fs::create_directories(dir_ / "xl" / "text_encoder_2");
  fs::create_directories(dir_ / "xl" / "unet");
  expect_error(dir_ / "xl", "SDXL", [&] { read_checkpoint(dir_ / "xl"); });
  fs::create_directories(dir_ / "bin" / "unet");
  { std::ofstream(dir_ / "bin" / "unet" / "diffusion_pytorch_model.bin") << "x"; }
  expect_error(dir_ / "bin" / "unet", "pickled", [&] { read_checkpoint(dir_ / "bin"); });
  fs::create_directories(dir_ / "bare" / "vae");
  expect_error(dir_ / "bare", "without weights", [&] { read_checkpoint(dir_ / "bare"); });
  fs::create_directories(dir_ / "foreign" / "unet");
  const auto foreign = dir_ / "foreign" / "unet" / "diffusion_pytorch_model.safetensors";
  save_safetensors(foreign, {{"down_blocks.0.resnets.5.conv1.weight", torch::zeros({1})}});
  expect_error(foreign, "down_blocks.0.resnets.5.conv1.weight", [&] { read_checkpoint(dir_ / "foreign"); });

  // A --config that is not there, or is no model config.
  expect_error(dir_ / "no-config", "does not exist",
               [&] { read_checkpoint(test::tiny_model_path(), dir_ / "no-config"); });
  const auto scheduler = tiny_config / "scheduler" / "scheduler_config.json";
  expect_error(scheduler, "PNDMScheduler", [&] { read_checkpoint(test::tiny_model_path(), scheduler); });

  // Writing never replaces something that is not the same kind of output.
  const auto ckpt = read_checkpoint(test::tiny_model_path(), tiny_config);
  const auto a_file = dir_ / "keep.safetensors";
  { std::ofstream(a_file) << "precious"; }
  expect_error(a_file, "refusing", [&] { write_checkpoint(ckpt, a_file, CheckpointLayout::Diffusers); });
  fs::create_directories(dir_ / "home" / "docs");
  expect_error(dir_ / "home", "refusing",
               [&] { write_checkpoint(ckpt, dir_ / "home", CheckpointLayout::Diffusers); });
  EXPECT_TRUE(fs::exists(dir_ / "home" / "docs"));
  expect_error(dir_ / "home", "is a folder",
               [&] { write_checkpoint(ckpt, dir_ / "home", CheckpointLayout::Ldm); });
  EXPECT_EQ(fs::file_size(a_file), 8u);
}

TEST_F(CheckpointTest, LoaderListsAtMostTwentyNamesWithCountsAndCasts) {
  CLIPTextModel te(tiny_configs().text_encoder);
  const auto message = error_of([&] { load_state_dict(*te, {}, "empty.safetensors"); });
  EXPECT_NE(message.find("empty.safetensors: does not fit the model; 52 missing: "), std::string::npos)
      << message;
  EXPECT_NE(message.find("... (32 more)"), std::string::npos) << message;

  // bf16 weights land in the fp32 parameters, rounded once; state_dict() gives them back by name.
  const auto ckpt = read_checkpoint(test::tiny_model_path(), test::tiny_config_path());
  StateDict half;
  for (const auto& [name, t] : ckpt.text_encoder) half[name] = t.to(torch::kBFloat16);
  load_state_dict(*te, half, "bf16");
  const auto loaded = state_dict(*te);
  ASSERT_EQ(loaded.size(), 52u);
  for (const auto& [name, t] : loaded) {
    EXPECT_EQ(t.scalar_type(), torch::kFloat32) << name;
    EXPECT_TRUE(torch::equal(t, half.at(name).to(torch::kFloat32))) << name;
  }
}

TEST_F(CheckpointTest, ConvertsInPlace) {
  const auto file = dir_ / "model.safetensors";
  fs::copy_file(test::tiny_model_path(), file);
  write_checkpoint(read_checkpoint(file), file, CheckpointLayout::Ldm, torch::kFloat16);
  const auto original = SafeTensorsFile::open(test::tiny_model_path());
  const auto converted = SafeTensorsFile::open(file);
  ASSERT_EQ(converted.entries().size(), original.entries().size());
  for (const auto& e : original.entries()) {
    const auto t = original.tensor(e.name);
    const auto expected = t.is_floating_point() ? t.to(torch::kFloat16) : t;
    EXPECT_TRUE(torch::equal(converted.tensor(e.name), expected)) << e.name;
  }
  // The same for a diffusers folder written over itself.
  const auto folder = dir_ / "folder";
  write_checkpoint(read_checkpoint(file, test::tiny_config_path()), folder, CheckpointLayout::Diffusers);
  write_checkpoint(read_checkpoint(folder), folder, CheckpointLayout::Diffusers, torch::kFloat32);
  std::string why;
  EXPECT_TRUE(same_tensors(
      read_checkpoint(folder).unet,
      [&] {
        StateDict expected;
        for (const auto& [name, t] : read_checkpoint(file).unet) expected[name] = t.to(torch::kFloat32);
        return expected;
      }(),
      &why))
      << why;
}

}  // namespace
}  // namespace kiln
