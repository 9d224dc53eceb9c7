// txt2img on the tiny model against diffusers' StableDiffusionPipeline: prompt embeddings, seeded
// initial noise, the whole sampling loop and the decoded picture; A1111 emphasis and long prompts;
// the PNG "parameters" text; prompt files.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <unistd.h>

#include "golden_compare.h"
#include "pipeline/a1111_parameters.h"
#include "pipeline/loaded_model.h"
#include "pipeline/prompt_encoder.h"
#include "pipeline/prompt_file.h"
#include "pipeline/txt2img.h"
#include "util/error.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using test::all_close;

// Same bound as the sampler trajectories: 8 guided steps on a random model reach |x| ~ 67.
constexpr test::Tolerance kTrajectory{1e-3, 1e-4};

struct Fixture {
  StableDiffusionModels models = test::load_tiny_models();
  CLIPTokenizer tokenizer = CLIPTokenizer::from_embedded();
};
Fixture& tiny() {
  static Fixture fixture;  // loading once keeps the suite fast; the tests only read the models
  return fixture;
}

TEST(PromptEncoder, PlainPromptsGiveDiffusersEmbeddings) {
  PromptEncoder encoder(tiny().models.text_encoder, tiny().tokenizer);
  const auto golden = test::golden_file("samplers.safetensors").tensor("prompt_embeds_cfg_batch");
  EXPECT_TRUE(all_close(encoder.encode(""), golden.slice(0, 0, 1), test::kSingleForward, "negative ''"));
  EXPECT_TRUE(all_close(encoder.encode("a photo of a red circle"), golden.slice(0, 1, 2),
                        test::kSingleForward, "prompt"));
}

TEST(PromptEncoder, ClipSkip2IsThePenultimateLayerThroughTheFinalNorm) {
  PromptEncoder encoder(tiny().models.text_encoder, tiny().tokenizer, {2});
  const auto golden = test::golden_file("text_encoder.safetensors");
  const auto prompts = golden.tensor("input_ids");
  const auto want = golden.tensor("penultimate_hidden_state_final_ln");
  EXPECT_TRUE(all_close(encoder.encode("a photo of a red circle"), want.slice(0, 0, 1), test::kSingleForward,
                        "clip skip 2"));
  EXPECT_EQ(prompts.size(0), 2);
}

// A1111 "Original" emphasis: each token's vector times its weight, then the whole chunk rescaled so
// its mean is what it was. So weighted rows are exactly w·c times the plain ones, the others c.
TEST(PromptEncoder, EmphasisScalesTheWeightedTokensAndKeepsTheMean) {
  PromptEncoder encoder(tiny().models.text_encoder, tiny().tokenizer);
  const auto plain = encoder.encode("a red circle");
  EXPECT_TRUE(torch::equal(encoder.encode("a (red:1.0) circle"), plain));
  const auto weighted = encoder.encode("a (red:1.5) circle");
  // The context is unchanged by the weights (causal CLIP sees the same ids): only scaling differs.
  EXPECT_NEAR(weighted.mean().item<double>(), plain.mean().item<double>(), 1e-7);
  const auto ratio = weighted / plain;
  const double c = ratio[0][0].mean().item<double>();  // BOS row: weight 1 -> just c
  const auto chunk = encoder.chunks("a (red:1.5) circle")[0];
  for (int64_t i = 0; i < 77; ++i) {
    const double w = chunk.weights[static_cast<size_t>(i)];
    EXPECT_TRUE(all_close(ratio[0][i], torch::full({32}, w * c), {1e-5, 0}, "row " + std::to_string(i)));
  }
  EXPECT_EQ(chunk.weights[2], 1.5f);  // BOS, "a", "red"
  PromptEncoder no_norm(tiny().models.text_encoder, tiny().tokenizer, {1, EmphasisMode::NoNorm});
  EXPECT_TRUE(
      all_close(no_norm.encode("a (red:1.5) circle")[0][2], plain[0][2] * 1.5, test::kExact, "no norm"));
}

TEST(PromptEncoder, LongPromptsAreEncodedInChunksOf77) {
  PromptEncoder encoder(tiny().models.text_encoder, tiny().tokenizer);
  std::string words;
  for (int i = 0; i < 100; ++i) words += i ? " cat" : "cat";
  const auto z = encoder.encode(words);
  ASSERT_EQ(z.size(1), 154);
  // Chunk 2 holds the last 25 cats: the same as encoding those 25 alone.
  std::string rest;
  for (int i = 0; i < 25; ++i) rest += i ? " cat" : "cat";
  EXPECT_TRUE(all_close(z.slice(1, 77, 154), encoder.encode(rest), test::kExact, "second chunk"));
}

// The golden txt2img recipe (samplers.* and samplers_extra.*): its prompt, 8 steps, CFG 7.5, seed 3
// (the golden initial latent), 128 px.
GenerationSettings golden_recipe(const std::string& sampler) {
  GenerationSettings s;
  s.prompt = "a photo of a red circle";
  s.sampler = sampler;
  s.steps = 8;
  s.cfg = 7.5;
  s.seed = 3;
  s.width = s.height = 128;
  return s;
}

// kiln's --seed 3 starts from the golden initial latent, so whole runs compare with diffusers'.
TEST(Txt2Img, Seed3ReproducesDiffusersPipeline) {
  Txt2Img txt2img(tiny().models, tiny().tokenizer);
  const auto golden = test::golden_file("samplers.safetensors");
  for (const auto& [golden_name, sampler] : {std::pair{"ddim", "ddim"}, std::pair{"euler", "euler"},
                                             std::pair{"dpmpp_2m_karras", "dpmpp_2m_karras"}}) {
    GenerationSettings s = golden_recipe(sampler);
    std::vector<int64_t> seen;
    const auto latents = txt2img.sample_latents(s, [&](int64_t done, int64_t total) {
      seen.push_back(done);
      EXPECT_EQ(total, 8);
    });
    EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
    const std::string p = std::string(golden_name) + ".";
    EXPECT_TRUE(all_close(latents, golden.tensor(p + "latents")[7], kTrajectory, p + "final latents"));
    // The PNG pixels: diffusers' round(clamp(x/2 + 0.5) · 255) of its decoded image, within one level.
    const auto image = txt2img.decode(latents)[0];
    const auto want = image_from_tensor(golden.tensor(p + "decoded_image")[0]);
    ASSERT_EQ(image.width, 128);
    int worst = 0;
    for (size_t i = 0; i < image.pixels.size(); ++i)
      worst = std::max(worst, std::abs(int(image.pixels[i]) - int(want.pixels[i])));
    EXPECT_LE(worst, 1) << p;
  }
}

// The same UNet read as a v-prediction model (samplers_extra, made from the tiny model's scheduler
// config: "leading" spacing): kiln turns the guided v into ε and lands on diffusers' latents, whether
// the model's scheduler config says v_prediction or the settings do.
TEST(Txt2Img, VPredictionReproducesDiffusersPipeline) {
  const auto golden = test::golden_file("samplers_extra.safetensors");
  NoiseScheduleConfig v_model;
  v_model.timestep_spacing = "leading";
  v_model.prediction = Prediction::V;
  Txt2Img from_config(tiny().models, tiny().tokenizer, NoiseSchedule(v_model));
  Txt2Img from_settings(tiny().models, tiny().tokenizer);
  for (const auto& [golden_name, sampler] : {std::pair{"ddim_v", "ddim"}, std::pair{"euler_v", "euler"},
                                             std::pair{"dpmpp_2m_karras_v", "dpmpp_2m_karras"}}) {
    GenerationSettings s = golden_recipe(sampler);
    const std::string p = std::string(golden_name) + ".";
    const auto latents = from_config.sample_latents(s);
    EXPECT_TRUE(all_close(latents, golden.tensor(p + "latents")[7], kTrajectory, p + "final latents"));
    EXPECT_EQ(from_config.resolved(s).prediction, "v_prediction");
    EXPECT_EQ(from_config.resolved(s).spacing, "leading");
    s.prediction = "v_prediction";
    s.spacing = "leading";
    EXPECT_TRUE(torch::equal(from_settings.sample_latents(s), latents)) << p;
    const auto image = from_config.decode(latents)[0];
    const auto want = image_from_tensor(golden.tensor(p + "image")[0] * 2 - 1);
    int worst = 0;
    for (size_t i = 0; i < image.pixels.size(); ++i)
      worst = std::max(worst, std::abs(int(image.pixels[i]) - int(want.pixels[i])));
    EXPECT_LE(worst, 1) << p;
  }
}

// A model folder's scheduler config decides: the tiny model's says "leading"; marked v_prediction it
// is the model of samplers_extra's euler_v run, and kiln, told nothing else, walks that trajectory.
TEST(Txt2Img, AFoldersSchedulerConfigSetsSpacingAndPrediction) {
  const fs::path folder = fs::temp_directory_path() / ("kiln-scheduler-config-" + std::to_string(::getpid()));
  fs::remove_all(folder);
  fs::copy(test::tiny_config_path(), folder, fs::copy_options::recursive);
  const fs::path file = folder / "scheduler" / "scheduler_config.json";
  nlohmann::json scheduler;
  std::ifstream(file) >> scheduler;
  ASSERT_EQ(scheduler["timestep_spacing"], "leading");
  scheduler["prediction_type"] = "v_prediction";
  std::ofstream(file) << scheduler.dump(2);
  const auto model = load_model(test::tiny_model_path(), folder, false);
  fs::remove_all(folder);
  Txt2Img txt2img(model.models, model.tokenizer, NoiseSchedule(model.scheduler));
  const auto latents = txt2img.sample_latents(golden_recipe("euler"));
  EXPECT_TRUE(all_close(latents, test::golden_file("samplers_extra.safetensors").tensor("euler_v.latents")[7],
                        kTrajectory, "euler_v final latents"));
}

TEST(Txt2Img, BatchImageBIsTheSingleImageOfSeedPlusB) {
  Txt2Img txt2img(tiny().models, tiny().tokenizer);
  GenerationSettings s;
  s.prompt = "a blue square";
  s.negative = "blurry";
  s.sampler = "euler_a";  // draws noise every step: the per-image streams must stay separate
  s.steps = 4;
  s.width = 64;
  s.height = 96;
  s.seed = 10;
  s.batch = 2;
  const auto both = txt2img.sample_latents(s);
  ASSERT_EQ(both.sizes(), (torch::IntArrayRef{2, 4, 12, 8}));
  s.batch = 1;
  s.seed = 11;
  // Batched GEMMs round differently from single ones, and guidance 7 amplifies that a little; a
  // wrong seed would differ by O(1).
  EXPECT_TRUE(all_close(both[1].unsqueeze(0), txt2img.sample_latents(s), kTrajectory, "image 1"));
}

TEST(Txt2Img, PromptAndNegativeOfDifferentLengthsRunAsTwoCalls) {
  Txt2Img txt2img(tiny().models, tiny().tokenizer);
  GenerationSettings s;
  std::string long_prompt;
  for (int i = 0; i < 90; ++i) long_prompt += "red ";
  s.prompt = long_prompt;
  s.sampler = "heun";
  s.steps = 3;
  s.width = s.height = 64;
  const auto latents = txt2img.sample_latents(s);
  EXPECT_TRUE(torch::isfinite(latents).all().item<bool>());
  // cfg 1: no unconditional pass, only the prompt (diffusers' rule).
  s.cfg = 1.0;
  EXPECT_TRUE(torch::isfinite(txt2img.sample_latents(s)).all().item<bool>());
}

TEST(Txt2Img, BadSettingsAreRefusedBeforeAnyWork) {
  Txt2Img txt2img(tiny().models, tiny().tokenizer);
  GenerationSettings s;
  s.width = 100;
  try {
    txt2img.sample_latents(s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("width 100 is not a positive multiple of 8"), std::string::npos);
  }
  s.width = 64;
  s.sampler = "plms";
  EXPECT_THROW(txt2img.sample_latents(s), Error);
}

TEST(A1111Parameters, FormatsAsTheWebUiDoesAndParsesBack) {
  GenerationSettings s;
  s.prompt = "a photo of a red circle, (masterpiece:1.2)";
  s.negative = "blurry";
  s.sampler = "euler_a";
  s.steps = 20;
  s.cfg = 7.5;
  s.width = 512;
  s.height = 768;
  s.clip_skip = 2;
  const auto text = format_a1111_parameters(s, 42, {"v1-5-pruned-emaonly", "6ce0161689"});
  EXPECT_EQ(text,
            "a photo of a red circle, (masterpiece:1.2)\nNegative prompt: blurry\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x768, Model hash: 6ce0161689, "
            "Model: v1-5-pruned-emaonly, Clip skip: 2, Version: kiln " KILN_VERSION);
  const auto fields = parse_a1111_parameters(text);
  EXPECT_EQ(fields.at("Prompt"), s.prompt);
  EXPECT_EQ(fields.at("Negative prompt"), "blurry");
  EXPECT_EQ(fields.at("Seed"), "42");
  EXPECT_EQ(fields.at("CFG scale"), "7.5");
  EXPECT_EQ(fields.at("Clip skip"), "2");
  s.negative.clear();
  s.cfg = 7;
  s.clip_skip = 1;
  const auto plain = format_a1111_parameters(s, 1, {"my, model", ""});
  EXPECT_EQ(plain.find("Negative prompt"), std::string::npos);
  EXPECT_NE(plain.find("CFG scale: 7, "), std::string::npos);
  EXPECT_EQ(parse_a1111_parameters(plain).at("Model"), "my, model");  // quoted because of the comma
}

class PromptFileTest : public ::testing::Test {
 protected:
  fs::path write(const std::string& name, const std::string& text) {
    const auto path = fs::temp_directory_path() / ("kiln-prompts-" + std::to_string(::getpid()) + name);
    std::ofstream(path) << text;
    files_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const auto& f : files_) fs::remove(f);
  }
  std::vector<fs::path> files_;
};

TEST_F(PromptFileTest, TextJsonAndTomlOverrideTheDefaults) {
  GenerationSettings defaults;
  defaults.seed = 5;
  const auto txt = read_prompt_file(write(".txt", "# comment\na cat\n\n  \na dog\r\n"), defaults);
  ASSERT_EQ(txt.size(), 2u);
  EXPECT_EQ(txt[1].prompt, "a dog");
  EXPECT_EQ(txt[1].seed, 5u);

  const auto json = read_prompt_file(
      write(".json",
            R"(["a cat", {"prompt": "a dog", "seed": 9, "cfg": 4, "negative": "ugly", "width": 640}])"),
      defaults);
  ASSERT_EQ(json.size(), 2u);
  EXPECT_EQ(json[0].seed, 5u);
  EXPECT_EQ(json[1].seed, 9u);
  EXPECT_EQ(json[1].cfg, 4.0);
  EXPECT_EQ(json[1].negative, "ugly");
  EXPECT_EQ(json[1].width, 640);

  const auto toml = read_prompt_file(write(".toml", R"([[prompt]]
text = "a cat"
steps = 12
sampler = "heun"

[[prompt]]
prompt = "a dog"
cfg = 5.5
height = 384
)"),
                                     defaults);
  ASSERT_EQ(toml.size(), 2u);
  EXPECT_EQ(toml[0].steps, 12);
  EXPECT_EQ(toml[0].sampler, "heun");
  EXPECT_EQ(toml[1].cfg, 5.5);
  EXPECT_EQ(toml[1].height, 384);
}

TEST_F(PromptFileTest, ErrorsNameTheFileAndTheEntry) {
  auto message = [&](const std::string& name, const std::string& text) {
    const auto path = write(name, text);
    try {
      read_prompt_file(path, {});
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(path.string()), std::string::npos) << what;
      return what;
    }
    ADD_FAILURE() << "no error for " << text;
    return std::string();
  };
  EXPECT_NE(message("a.json", R"([{"prompt": "x", "colour": 1}])").find("entry 1: unknown key 'colour'"),
            std::string::npos);
  EXPECT_NE(message("b.json", R"(["x", {"prompt": "y", "seed": "abc"}])")
                .find("entry 2: 'seed' has the wrong type"),
            std::string::npos);
  EXPECT_NE(message("c.json", "[1,").find("not valid JSON"), std::string::npos);
  EXPECT_NE(message("d.toml", "[[prompt]]\ntext = \"x\"\nwidth = 500\n").find("not a positive multiple of 8"),
            std::string::npos);
  EXPECT_NE(message("e.txt", "# only a comment\n").find("holds no prompts"), std::string::npos);
  EXPECT_NE(message("f.toml", "title = 1\n").find("expected [[prompt]] tables"), std::string::npos);
}

}  // namespace
}  // namespace kiln
