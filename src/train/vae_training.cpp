#include "train/vae_training.h"

#include <torch/torch.h>

#include <cmath>

#include "train/lr_schedule.h"
#include "train/optimizer.h"
#include "util/error.h"

namespace kiln {

namespace {

std::vector<NamedParameter> all_parameters(torch::nn::Module& module) {
  std::vector<NamedParameter> out;
  for (const auto& item : module.named_parameters()) out.push_back({item.key(), item.value()});
  return out;
}

int64_t downsampling(const AutoencoderKL& vae) {
  return int64_t{1} << (vae->config().block_out_channels.size() - 1);
}

void check_images(const AutoencoderKL& vae, const torch::Tensor& images) {
  const int64_t factor = downsampling(vae);
  if (images.dim() != 4 || images.size(1) != 3 || images.size(0) == 0 || images.size(2) % factor != 0 ||
      images.size(3) % factor != 0)
    throw Error("train_vae: images must be [N, 3, H, W] with H and W multiples of " + std::to_string(factor) +
                ", got " + c10::str(images.sizes()));
}

}  // namespace

double train_vae(AutoencoderKL& vae, const torch::Tensor& images, const VaeTrainingOptions& options,
                 const VaeTrainingProgress& progress) {
  check_images(vae, images);
  if (options.steps <= 0 || options.batch_size <= 0) throw Error("train_vae: steps and batch_size must be positive");
  const int64_t factor = downsampling(vae);
  if (options.crop < 0 || options.crop % factor != 0 || options.crop > std::min(images.size(2), images.size(3)))
    throw Error("train_vae: crop " + std::to_string(options.crop) + " must be a multiple of " +
                std::to_string(factor) + " no larger than the pictures");
  vae->train();
  AdamWOptions adam;
  adam.lr = options.lr;
  adam.weight_decay = 0.0;
  AdamW optimizer(all_parameters(*vae), adam);
  LrSchedule schedule;
  schedule.kind = "cosine";
  schedule.lr = options.lr;
  schedule.warmup_steps = options.warmup_steps;
  schedule.total_steps = options.steps;

  torch::Generator generator = at::detail::createCPUGenerator(options.seed);
  const int64_t n = images.size(0);
  torch::Tensor order;
  int64_t cursor = n;
  for (int64_t step = 1; step <= options.steps; ++step) {
    if (cursor + options.batch_size > n) {
      order = torch::randperm(n, generator, torch::kLong);
      cursor = 0;
    }
    const int64_t take = std::min(options.batch_size, n);
    auto batch = images.index_select(0, order.slice(0, cursor, cursor + take));
    cursor += take;
    if (options.crop > 0) {
      // One window per batch, aligned to the latent grid.
      const int64_t top = torch::randint((images.size(2) - options.crop) / factor + 1, {1}, generator).item<int64_t>();
      const int64_t left = torch::randint((images.size(3) - options.crop) / factor + 1, {1}, generator).item<int64_t>();
      batch = batch.slice(2, top * factor, top * factor + options.crop)
                  .slice(3, left * factor, left * factor + options.crop)
                  .contiguous();
    }

    optimizer.set_learning_rate(learning_rate_at(schedule, step - 1));
    optimizer.zero_grad();
    const auto posterior = vae->encode(batch);
    const auto noise = torch::randn(posterior.mean.sizes(), generator);
    const auto reconstruction = vae->decode(posterior.sample(noise));
    const auto mse = torch::mse_loss(reconstruction, batch);
    // KL(q || N(0, 1)) per latent element, summed over latent dims, averaged over the batch (LDM).
    const auto kl = 0.5 * (posterior.mean.pow(2) + posterior.logvar.exp() - 1.0 - posterior.logvar)
                              .sum({1, 2, 3})
                              .mean();
    (mse + options.kl_weight * kl).backward();
    optimizer.step();
    if (progress) progress(step, mse.item<double>());
  }

  vae->eval();
  torch::NoGradGuard no_grad;
  double total = 0.0;
  for (int64_t start = 0; start < n; start += options.batch_size) {
    const auto batch = images.slice(0, start, std::min(n, start + options.batch_size));
    total += torch::mse_loss(vae->decode(vae->encode(batch).mean), batch, at::Reduction::Sum).item<double>();
  }
  return total / static_cast<double>(images.numel());
}

double normalise_latent_scale(AutoencoderKL& vae, const torch::Tensor& images) {
  check_images(vae, images);
  torch::NoGradGuard no_grad;
  vae->eval();
  std::vector<torch::Tensor> means;
  for (int64_t start = 0; start < images.size(0); start += 32)
    means.push_back(vae->encode(images.slice(0, start, std::min(images.size(0), start + 32))).mean);
  const double std = torch::cat(means).std().item<double>() * vae->scaling_factor();
  if (!(std > 0.0) || !std::isfinite(std)) throw Error("normalise_latent_scale: the latents have no spread");
  const double factor = 1.0 / std;
  const int64_t latent = vae->config().latent_channels;
  auto& q = vae->quant_conv;
  q->weight.slice(0, 0, latent).mul_(factor);
  q->bias.slice(0, 0, latent).mul_(factor);
  q->bias.slice(0, latent, 2 * latent).add_(2.0 * std::log(factor));
  vae->post_quant_conv->weight.div_(factor);
  return factor;
}

}  // namespace kiln
