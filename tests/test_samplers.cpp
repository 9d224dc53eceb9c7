// Noise schedule and samplers against diffusers 0.30: the β/ᾱ tables, every sampler's timesteps and
// σ for 8 and 20 steps in each spacing (exact), and 8-step txt2img trajectories on the tiny model —
// first with diffusers' recorded noise predictions (the sampler alone), then with kiln's own UNet
// and classifier-free guidance (the whole loop), down to the decoded image.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "diffusion/dpmpp_2m.h"
#include "diffusion/euler.h"
#include "diffusion/heun.h"
#include "diffusion/prediction.h"
#include "diffusion/sampler.h"
#include "diffusion/seeded_noise.h"
#include "golden_compare.h"
#include "test_support.h"
#include "util/error.h"

namespace kiln {
namespace {

using test::all_close;

// Python's json writes -Infinity / NaN (e.g. DPM-Solver's lambda_min_clipped); JSON has no such
// numbers, and no test reads those fields, so they become null.
nlohmann::json golden_json(const std::string& name) {
  std::ifstream in(test::golden_dir() / name);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const std::string token : {"-Infinity", "Infinity", "NaN"})
    for (size_t at = text.find(token); at != std::string::npos; at = text.find(token, at))
      text.replace(at, token.size(), "null");
  return nlohmann::json::parse(text);
}

// 8 steps with CFG 7.5 on a random model reach latents of magnitude ~60 (golden README): errors of
// 1e-6 relative per step compound, so trajectories are held to 1e-4 of their scale.
constexpr test::Tolerance kTrajectory{1e-3, 1e-4};

TEST(NoiseSchedule, BetasAndAlphasCumprodAreExact) {
  const NoiseSchedule schedule;
  const auto golden = test::golden_file("schedulers.safetensors");
  EXPECT_TRUE(all_close(schedule.betas, golden.tensor("betas"), test::kExact, "betas"));
  EXPECT_TRUE(
      all_close(schedule.alphas_cumprod, golden.tensor("alphas_cumprod"), test::kExact, "alphas_cumprod"));
}

std::string sampler_name(const std::string& diffusers_class) {
  if (diffusers_class == "DDIMScheduler") return "ddim";
  if (diffusers_class == "EulerDiscreteScheduler") return "euler";
  if (diffusers_class == "EulerAncestralDiscreteScheduler") return "euler_a";
  if (diffusers_class == "DPMSolverMultistepScheduler") return "dpmpp_2m";
  return "";
}

TEST(NoiseSchedule, TimestepsAndSigmasOfEverySpacingAreExact) {
  const NoiseSchedule schedule;
  const auto golden = golden_json("schedulers.json");
  int checked = 0;
  for (const char* steps_key : {"steps_8", "steps_20"}) {
    for (const auto& [variant, v] : golden[steps_key].items()) {
      const auto name = sampler_name(v["class"]);
      if (name.empty()) continue;  // PNDM: not a kiln sampler
      SamplerOptions options;
      options.steps = v["num_inference_steps"];
      options.spacing = v["timestep_spacing"];
      options.karras = v["extra_kwargs"].value("use_karras_sigmas", false);
      auto sampler = make_sampler(name, schedule, options);
      const auto label = std::string(steps_key) + "/" + variant;
      const auto expected = v["timesteps"].get<std::vector<double>>();
      ASSERT_EQ(sampler->timesteps().size(), expected.size()) << label;
      // Karras timesteps of the Euler family stay fractional: they come through log σ in float32,
      // where numpy's vectorised log and libm's differ by an ulp, a few ulp of t at small t.
      const bool fractional_karras = options.karras && name != "dpmpp_2m";
      for (size_t i = 0; i < expected.size(); ++i) {
        const double allowed = fractional_karras ? 1e-4 : 0.0;  // of 1000 timesteps; σ stays exact
        EXPECT_LE(std::abs(sampler->timesteps()[i] - expected[i]), allowed) << label << " timestep " << i;
      }
      EXPECT_EQ(static_cast<float>(sampler->init_noise_sigma()), v["init_noise_sigma"].get<float>()) << label;
      if (v.contains("sigmas")) {
        torch::Tensor sigmas;
        if (auto* euler = dynamic_cast<EulerSampler*>(sampler.get())) sigmas = euler->sigmas();
        if (auto* dpm = dynamic_cast<DPMPP2MSampler*>(sampler.get())) sigmas = dpm->sigmas();
        const auto want = torch::tensor(v["sigmas"].get<std::vector<float>>());
        EXPECT_TRUE(all_close(sigmas, want, test::kExact, label + " sigmas"));
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 22);
}

struct Run {
  std::string golden_name;  // key in samplers.json / prefix in samplers.safetensors
  std::string sampler;
};
const Run kRuns[] = {{"ddim", "ddim"},
                     {"euler", "euler"},
                     {"dpmpp_2m_karras", "dpmpp_2m_karras"},
                     {"euler_ancestral", "euler_a"}};

TEST(Samplers, TrajectoriesFromRecordedNoisePredictions) {
  torch::NoGradGuard no_grad;
  const NoiseSchedule schedule;
  const auto golden = test::golden_file("samplers.safetensors");
  const auto runs = golden_json("samplers.json");
  for (const auto& run : kRuns) {
    auto sampler =
        make_sampler(run.sampler, schedule, {runs["num_inference_steps"].get<int64_t>(), "", false});
    const auto p = run.golden_name + ".";
    auto x = golden.tensor("init_latents") * sampler->init_noise_sigma();
    EXPECT_TRUE(all_close(x, golden.tensor(p + "start_latents"), test::kExact, p + "start_latents"));
    const auto guided = golden.tensor(p + "guided_noise_pred"), latents = golden.tensor(p + "latents");
    const auto unet_input = golden.tensor(p + "unet_input"), unet_t = golden.tensor(p + "unet_timestep");
    for (size_t i = 0; i < sampler->steps(); ++i) {
      const auto step = std::to_string(i);
      EXPECT_EQ(static_cast<float>(sampler->timesteps()[i]), unet_t[i].item<float>()) << p << step;
      EXPECT_TRUE(all_close(sampler->scale_model_input(x, i), unet_input[i][0].unsqueeze(0),
                            test::kSingleForward, p + "unet_input " + step));
      torch::Tensor noise;
      if (sampler->uses_noise()) noise = golden.tensor(p + "noise")[i];
      x = sampler->step(guided[i], i, x, noise);
      EXPECT_TRUE(all_close(x, latents[i], kTrajectory, p + "latents " + step));
    }
  }
}

TEST(Samplers, WholeLoopWithKilnsUNetAndGuidance) {
  torch::NoGradGuard no_grad;
  auto models = test::load_tiny_models();
  const NoiseSchedule schedule;
  const auto golden = test::golden_file("samplers.safetensors");
  const auto context = golden.tensor("prompt_embeds_cfg_batch");  // [negative, prompt]
  constexpr double kGuidance = 7.5;
  for (const auto& run : kRuns) {
    auto sampler = make_sampler(run.sampler, schedule, {8, "", false});
    const auto p = run.golden_name + ".";
    auto x = golden.tensor("init_latents") * sampler->init_noise_sigma();
    for (size_t i = 0; i < sampler->steps(); ++i) {
      auto input = sampler->scale_model_input(torch::cat({x, x}), i);
      auto t = torch::full({2}, sampler->timesteps()[i], torch::kFloat32);
      auto out = models.unet->forward(input, t, context);
      auto eps = out[0] + kGuidance * (out[1] - out[0]);  // classifier-free guidance, row 0 unconditional
      torch::Tensor noise;
      if (sampler->uses_noise()) noise = golden.tensor(p + "noise")[i];
      x = sampler->step(eps.unsqueeze(0), i, x, noise);
      EXPECT_TRUE(
          all_close(x, golden.tensor(p + "latents")[i], kTrajectory, p + "latents " + std::to_string(i)));
    }
    auto image = models.vae->decode(x / models.vae->scaling_factor());
    EXPECT_TRUE(
        all_close(image, golden.tensor(p + "decoded_image"), test::kDeepForward, p + "decoded_image"));
    std::cout << "[ reached ] " << run.sampler << ": final latents max abs "
              << test::max_abs_error(x, golden.tensor(p + "latents")[7]) << " (|ref| max "
              << golden.tensor(p + "latents")[7].abs().max().item<double>() << "), image max abs "
              << test::max_abs_error(image, golden.tensor(p + "decoded_image")) << "\n";
  }
}

// The same tiny UNet read as a v-prediction model (samplers_extra: DDIM, Euler and DPM++ 2M Karras
// with prediction_type "v_prediction", "leading" spacing): each sampler turns the recorded guided v
// into ε at its own σ and walks diffusers' trajectory.
TEST(Samplers, VPredictionTrajectoriesFromRecordedModelOutputs) {
  torch::NoGradGuard no_grad;
  const auto golden = test::golden_file("samplers_extra.safetensors");
  const auto runs = golden_json("samplers_extra.json");
  const double cfg = runs["guidance_scale"].get<double>();
  for (const auto& [golden_name, name] : {std::pair{"ddim_v", "ddim"}, std::pair{"euler_v", "euler"},
                                          std::pair{"dpmpp_2m_karras_v", "dpmpp_2m_karras"}}) {
    const auto& config = runs["runs"][golden_name]["resolved_config"];
    ASSERT_EQ(config["prediction_type"], "v_prediction");
    NoiseScheduleConfig schedule_config;
    schedule_config.steps_offset = config["steps_offset"].get<int64_t>();
    auto sampler = make_sampler(name, NoiseSchedule(schedule_config),
                                {runs["num_inference_steps"].get<int64_t>(), config["timestep_spacing"], false});
    const std::string p = std::string(golden_name) + ".";
    const auto output = golden.tensor(p + "unet_output"), input = golden.tensor(p + "unet_input");
    const auto latents = golden.tensor(p + "latents");
    auto x = golden.tensor("init_latents") * sampler->init_noise_sigma();
    for (size_t i = 0; i < sampler->steps(); ++i) {
      const auto step = std::to_string(i);
      EXPECT_EQ(static_cast<float>(sampler->timesteps()[i]), golden.tensor(p + "unet_timestep")[i].item<float>())
          << p << step;
      const auto model_input = sampler->scale_model_input(x, i);
      EXPECT_TRUE(all_close(model_input, input[i][0].unsqueeze(0), test::kSingleForward, p + "unet_input " + step));
      const auto v = output[i][0] + cfg * (output[i][1] - output[i][0]);
      const auto eps = epsilon_from_v(v.unsqueeze(0), model_input, sampler->model_sigma(i));
      x = sampler->step(eps, i, x);
      EXPECT_TRUE(all_close(x, latents[i], kTrajectory, p + "latents " + step));
    }
  }
}

// With v = α·ε − σ·x0 and x = α·x0 + σ·ε (α² + σ² = 1, σ/α the sampler's noise level), ε = α·v + σ·x.
TEST(Prediction, EpsilonFromVAtKnownNoiseLevels) {
  const auto v = torch::tensor({1.0f, -2.0f}), x = torch::tensor({0.5f, 4.0f});
  EXPECT_TRUE(torch::allclose(epsilon_from_v(v, x, 0.0), v));  // no noise: α = 1
  const double h = std::sqrt(0.5);
  EXPECT_TRUE(torch::allclose(epsilon_from_v(v, x, 1.0), h * v + h * x));
  const double sigma = 3.0, alpha = 1 / std::sqrt(10.0), sigma_vp = 3 / std::sqrt(10.0);
  const auto eps = torch::tensor({0.3f, -1.1f}), x0 = torch::tensor({2.0f, 0.25f});
  EXPECT_TRUE(torch::allclose(epsilon_from_v(alpha * eps - sigma_vp * x0, alpha * x0 + sigma_vp * eps, sigma), eps,
                              1e-5, 1e-6));
  EXPECT_EQ(parse_prediction("v_prediction"), Prediction::V);
  EXPECT_EQ(prediction_name(Prediction::Epsilon), "epsilon");
  EXPECT_TRUE(test::error_of([] { parse_prediction("sample"); }).has_value());
}

// Every noise tensor diffusers' Euler ancestral drew came from torch.Generator().manual_seed(1234)
// in [1, 4, 16, 16] draws; the UNet golden inputs are one generator seeded 1 (sample, then context).
TEST(SeededNoise, DrawsWhatTorchsCpuGeneratorDraws) {
  const auto samplers = test::golden_file("samplers.safetensors");
  const auto recorded = samplers.tensor("euler_ancestral.noise");
  SeededNoise noise(1234, 1);
  for (int64_t i = 0; i < recorded.size(0); ++i)
    EXPECT_TRUE(all_close(noise.randn({4, 16, 16}), recorded[i], test::kExact, "draw " + std::to_string(i)));

  const auto unet = test::golden_file("unet.safetensors");
  const auto sample = unet.tensor("sample"), context = unet.tensor("encoder_hidden_states");
  at::Generator generator = at::detail::createCPUGenerator(1);
  EXPECT_TRUE(all_close(torch::randn(sample.sizes(), generator), sample, test::kExact, "unet sample"));
  EXPECT_TRUE(all_close(torch::randn(context.sizes(), generator), context, test::kExact, "unet context"));
}

// The samplers' golden initial latent is torch.randn([1, 4, 16, 16]) from a generator seeded 3:
// `--seed 3` starts kiln's 128x128 txt2img exactly where diffusers started.
TEST(SeededNoise, Seed3GivesTheGoldenInitialLatent) {
  const auto golden = test::golden_file("samplers.safetensors");
  SeededNoise noise(3, 1);
  EXPECT_TRUE(
      all_close(noise.randn({4, 16, 16}), golden.tensor("init_latents"), test::kExact, "init_latents"));
}

TEST(SeededNoise, ImageBOfABatchUsesSeedPlusB) {
  SeededNoise batch(41, 3), single(42, 1);
  EXPECT_EQ(batch.seed(2), 43u);
  const auto first = batch.randn({4, 8, 8}), again = batch.randn({4, 8, 8});
  EXPECT_TRUE(torch::equal(first[1], single.randn({4, 8, 8})[0]));
  EXPECT_TRUE(torch::equal(again[1], single.randn({4, 8, 8})[0]));  // streams continue per image
  EXPECT_FALSE(torch::equal(first[0], first[1]));
}

// Heun visits each interior σ twice (predictor, corrector), as diffusers' HeunDiscreteScheduler:
// its tables are Euler's (golden-exact above) interleaved.
TEST(Heun, TablesAreEulersWithInteriorEntriesRepeated) {
  const NoiseSchedule schedule;
  const auto golden = golden_json("schedulers.json")["steps_8"]["euler_linspace_default"];
  HeunSampler heun(schedule, 8, TimestepSpacing::Linspace, false);
  const auto t = golden["timesteps"].get<std::vector<double>>();
  const auto sigmas = golden["sigmas"].get<std::vector<float>>();
  std::vector<double> want_t{t[0]};
  std::vector<float> want_sigmas{sigmas[0]};
  for (size_t i = 1; i < t.size(); ++i) want_t.insert(want_t.end(), {t[i], t[i]});
  for (size_t i = 1; i + 1 < sigmas.size(); ++i)
    want_sigmas.insert(want_sigmas.end(), {sigmas[i], sigmas[i]});
  want_sigmas.push_back(0.0f);
  ASSERT_EQ(heun.timesteps().size(), 15u);
  for (size_t i = 0; i < want_t.size(); ++i) EXPECT_EQ(heun.timesteps()[i], static_cast<float>(want_t[i]));
  EXPECT_TRUE(all_close(heun.sigmas(), torch::tensor(want_sigmas), test::kExact, "heun sigmas"));
  EXPECT_EQ(heun.init_noise_sigma(), golden["init_noise_sigma"].get<float>());
}

// On an ODE with a closed form, Heun's error must shrink with the square of the step (Euler's only
// linearly): dx/dσ = ε(x, σ) = x·σ/(1 + σ²) has x(σ) = x(σ₀)·√((1 + σ²)/(1 + σ₀²)).
double final_error(const std::string& name, int64_t steps) {
  const NoiseSchedule schedule;
  auto sampler = make_sampler(name, schedule, {steps, "", true});
  auto x = torch::ones({1}, torch::kFloat64) * sampler->init_noise_sigma();
  const double start = x.item<double>(), sigma0 = sampler->init_noise_sigma();
  for (size_t i = 0; i < sampler->steps(); ++i) {
    const double sigma = dynamic_cast<EulerSampler&>(*sampler).sigmas()[i].item<double>();
    x = sampler->step(x * sigma / (1 + sigma * sigma), i, x);
  }
  return std::abs(x.item<double>() - start / std::sqrt(1 + sigma0 * sigma0));
}

TEST(Heun, ConvergesWithSecondOrder) {
  const double heun_10 = final_error("heun", 10), heun_40 = final_error("heun", 40);
  const double euler_10 = final_error("euler", 10), euler_40 = final_error("euler", 40);
  std::cout << "[ errors ] heun " << heun_10 << " -> " << heun_40 << ", euler " << euler_10 << " -> "
            << euler_40 << "\n";
  EXPECT_GT(heun_10 / heun_40, 10.0);  // ~16 for a second-order method over 4x finer steps
  EXPECT_LT(euler_10 / euler_40, 6.0);
  EXPECT_LT(heun_40, euler_40 / 10);
}

TEST(Samplers, UnknownNameListsTheKnownOnes) {
  const NoiseSchedule schedule;
  try {
    make_sampler("heunpp", schedule, {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dpmpp_2m_karras"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_sampler("euler", schedule, {20, "sideways", false}), Error);
}

}  // namespace
}  // namespace kiln
