// One SD training step on the tiny model against diffusers/torch (golden train_step.*): the noised
// latents, the prediction, the ε and v losses, the gradients of every named tensor, and one AdamW
// update with the text encoder and the UNet at different learning rates.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "golden_compare.h"
#include "train/diffusion_loss.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace kiln {
namespace {

using test::all_close;

nlohmann::json train_json() {
  std::ifstream in(test::golden_dir() / "train_step.json");
  return nlohmann::json::parse(in);
}

std::vector<NamedParameter> named_parameters(torch::nn::Module& module) {
  std::vector<NamedParameter> out;
  for (const auto& item : module.named_parameters()) out.push_back({item.key(), item.value()});
  return out;
}

struct StepResult {
  torch::Tensor context, noisy, prediction, loss_epsilon, loss_v;
};

StepResult forward_step(StableDiffusionModels& models, const SafeTensorsFile& golden) {
  const NoiseSchedule schedule;
  StepResult r;
  const auto latents = golden.tensor("latents"), noise = golden.tensor("noise");
  const auto timesteps = golden.tensor("timesteps");
  r.context = models.text_encoder->encode(golden.tensor("input_ids"));
  r.noisy = add_noise(schedule, latents, noise, timesteps);
  r.prediction = models.unet->forward(r.noisy, timesteps, r.context);
  r.loss_epsilon = diffusion_loss(schedule, r.prediction, noise, timesteps, {});
  r.loss_v = diffusion_loss(schedule, r.prediction, velocity(schedule, latents, noise, timesteps), timesteps,
                            {Prediction::V});
  return r;
}

TEST(TrainStep, LossesAndGradientsMatchTorch) {
  auto models = test::load_tiny_models();
  models.text_encoder->train();
  models.unet->train();
  const auto golden = test::golden_file("train_step.safetensors");
  const auto json = train_json();
  auto r = forward_step(models, golden);
  EXPECT_TRUE(all_close(r.context, golden.tensor("encoder_hidden_states"), test::kSingleForward, "context"));
  EXPECT_TRUE(all_close(r.noisy, golden.tensor("noisy_latents"), test::kExact, "noisy latents"));
  EXPECT_TRUE(all_close(r.prediction, golden.tensor("model_pred"), test::kDeepForward, "model_pred"));
  EXPECT_TRUE(all_close(
      velocity(NoiseSchedule(), golden.tensor("latents"), golden.tensor("noise"), golden.tensor("timesteps")),
      golden.tensor("v_target"), test::kExact, "v target"));
  EXPECT_NEAR(r.loss_epsilon.item<double>(), json["loss_epsilon"].get<double>(), 1e-6);
  EXPECT_NEAR(r.loss_v.item<double>(), json["loss_v_prediction"].get<double>(), 1e-6);

  r.loss_epsilon.backward();
  // Named gradients, and the L2 norm of every parameter's gradient (736 of them).
  const auto rows = golden.tensor("token_embedding_rows_index");
  int checked = 0;
  for (const auto& [part, module] :
       {std::pair<std::string, torch::nn::Module*>{"text_encoder", models.text_encoder.get()},
        std::pair<std::string, torch::nn::Module*>{"unet", models.unet.get()}}) {
    for (const auto& item : module->named_parameters()) {
      const auto key = part + "." + item.key();
      const auto& grad = item.value().grad();
      ASSERT_TRUE(grad.defined()) << key;
      const double norm = grad.to(torch::kFloat64).norm().item<double>();
      const double want = json["grad_l2_norms"][key].get<double>();
      EXPECT_NEAR(norm, want, 1e-4 * want + 1e-7) << key;
      if (golden.contains("grad." + key)) {
        EXPECT_TRUE(all_close(grad, golden.tensor("grad." + key), test::kDeepForward, "grad " + key));
      }
      if (golden.contains("grad." + key + ".rows")) {
        EXPECT_TRUE(all_close(grad.index_select(0, rows), golden.tensor("grad." + key + ".rows"),
                              test::kDeepForward, "grad rows " + key));
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 736);
}

// Checkpointed blocks recompute their activations in backward: the same gradients, to the bit.
TEST(TrainStep, GradientCheckpointingGivesTheSameGradients) {
  const auto golden = test::golden_file("train_step.safetensors");
  std::vector<std::map<std::string, torch::Tensor>> grads;
  for (const bool checkpointing : {false, true}) {
    auto models = test::load_tiny_models();
    models.text_encoder->train();
    models.unet->train();
    models.text_encoder->set_gradient_checkpointing(checkpointing);
    models.unet->set_gradient_checkpointing(checkpointing);
    forward_step(models, golden).loss_epsilon.backward();
    auto& out = grads.emplace_back();
    for (auto* module : {static_cast<torch::nn::Module*>(models.text_encoder.get()),
                         static_cast<torch::nn::Module*>(models.unet.get())})
      for (const auto& item : module->named_parameters(true))
        out[item.key() + "@" + module->name()] = item.value().grad();
  }
  ASSERT_EQ(grads[0].size(), 736u);
  for (const auto& [name, grad] : grads[0]) {
    EXPECT_TRUE(grads[1].at(name).defined()) << name;
    if (!grads[1].at(name).defined()) continue;
    EXPECT_TRUE(all_close(grads[1].at(name), grad, test::kSingleForward, name));
  }
}

// torch.optim.AdamW([{TE, lr 1.5e-4}, {UNet, lr 5e-5}], betas (0.9, 0.999), eps 1e-8, wd 1e-2).
TEST(TrainStep, AdamWWithTwoLearningRatesMatchesTorch) {
  auto models = test::load_tiny_models();
  models.text_encoder->train();
  models.unet->train();
  const auto golden = test::golden_file("train_step.safetensors");
  const auto json = train_json();
  AdamW text_encoder(named_parameters(*models.text_encoder), {1.5e-4, 0.9, 0.999, 1e-8, 1e-2});
  AdamW unet(named_parameters(*models.unet), {5e-5, 0.9, 0.999, 1e-8, 1e-2});
  std::map<std::string, torch::Tensor> before;
  for (auto* optimizer : {&text_encoder, &unet})
    for (const auto& p : optimizer->parameters())
      before[p.name + (optimizer == &unet ? "#u" : "#t")] = p.tensor.detach().clone();
  forward_step(models, golden).loss_epsilon.backward();
  text_encoder.step();
  unet.step();

  const auto rows = golden.tensor("token_embedding_rows_index");
  int exact_tensors = 0, noise_only = 0;
  for (const auto& [part, optimizer] :
       {std::pair{std::string("text_encoder"), &text_encoder}, std::pair{std::string("unet"), &unet}}) {
    for (const auto& p : optimizer->parameters()) {
      const auto key = part + "." + p.name;
      const auto& old = before.at(p.name + (part == "unet" ? "#u" : "#t"));
      const double norm = (p.tensor.detach() - old).to(torch::kFloat64).norm().item<double>();
      const double want = json["adamw_update_l2_norms"][key].get<double>();
      // Some gradients are zero in exact arithmetic (a bias just before a GroupNorm, the key bias
      // under softmax) and only rounding noise in both implementations; Adam normalises that noise
      // to a full-size step, so their updates are noise too. They are counted, not compared.
      if (json["grad_l2_norms"][key].get<double>() < 1e-6) {
        ++noise_only;
        continue;
      }
      EXPECT_NEAR(norm, want, 1e-3 * want + 1e-9) << key;
      if (golden.contains("adamw.updated." + key)) {
        EXPECT_TRUE(
            all_close(p.tensor, golden.tensor("adamw.updated." + key), {1e-6, 1e-6}, "updated " + key));
        ++exact_tensors;
      }
      if (golden.contains("adamw.updated." + key + ".rows")) {
        EXPECT_TRUE(all_close(p.tensor.index_select(0, rows), golden.tensor("adamw.updated." + key + ".rows"),
                              {1e-6, 1e-6}, "updated rows " + key));
      }
    }
  }
  EXPECT_EQ(exact_tensors, 18);
  EXPECT_LE(noise_only, 24);  // of 736 parameters
  // Row 1000 is used by no prompt: its update is weight decay alone, exactly p·(1 − lr·wd).
  auto& token_embedding = text_encoder.parameters().front();
  ASSERT_EQ(token_embedding.name, "text_model.embeddings.token_embedding.weight");
  const auto row = before.at(token_embedding.name + "#t")[1000];
  EXPECT_TRUE(torch::equal(token_embedding.tensor[1000], row * (1 - 1.5e-4 * 1e-2)));
}

TEST(TrainStep, AdamWStateRoundTripsAndContinuesIdentically) {
  torch::manual_seed(3);
  auto make = [] { return torch::randn({5, 3}).requires_grad_(true); };
  auto a = make();
  auto b = a.detach().clone().requires_grad_(true);
  AdamW first({{"w", a}}, {1e-2, 0.9, 0.999, 1e-8, 1e-2});
  for (int i = 0; i < 3; ++i) {
    a.mutable_grad() = torch::full_like(a, 0.1 * (i + 1));
    first.step();
  }
  // A second optimizer restored from the first's state continues exactly as the first does.
  AdamW second({{"w", b}}, {1e-2, 0.9, 0.999, 1e-8, 1e-2});
  {
    torch::NoGradGuard no_grad;
    b.copy_(a);
  }
  second.load_state(first.state());
  a.mutable_grad() = torch::full_like(a, -0.3);
  b.mutable_grad() = torch::full_like(b, -0.3);
  first.step();
  second.step();
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_THROW(second.load_state({{"w.exp_avg", torch::zeros({2})},
                                  {"w.exp_avg_sq", torch::zeros({2})},
                                  {"w.step", torch::tensor(1)}}),
               Error);
}

}  // namespace
}  // namespace kiln
