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
#include "diffusion/sampler.h"
#include "golden_compare.h"
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
