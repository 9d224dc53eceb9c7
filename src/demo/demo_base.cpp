#include "demo/demo_base.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>

#include "data/image_file.h"
#include "io/checkpoint.h"
#include "models/model_loading.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "train/vae_training.h"
#include "util/error.h"
#include "util/progress.h"

namespace kiln {

namespace {

namespace fs = std::filesystem;

// The world's pictures as one [N, 3, H, W] tensor in [-1, 1], in file-name order.
torch::Tensor load_pictures(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".png") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) throw_file_error(dir, "no pictures to train the demo's VAE on");
  std::vector<torch::Tensor> pictures;
  for (const auto& file : files) {
    Image image = load_image(file);
    auto t = torch::from_blob(image.pixels.data(), {image.height, image.width, 3}, torch::kUInt8)
                 .permute({2, 0, 1})
                 .to(torch::kFloat32);
    pictures.push_back(t / 127.5 - 1.0);
  }
  return torch::stack(pictures);
}

void say(std::ostream* console, const std::string& line) {
  if (console) *console << line << "\n" << std::flush;
}

}  // namespace

void train_demo_base(const DemoWorld& world, const fs::path& work_dir, const fs::path& out,
                     const DemoBaseOptions& options, std::ostream* console) {
  fs::create_directories(work_dir);
  // Initial weights from torch's default initialisers; seeding here makes them the same every run.
  torch::manual_seed(options.seed);
  StableDiffusionModels models(tiny_configs());
  // CLIP's own initialiser: embeddings N(0, 0.02) rather than torch's N(0, 1).
  {
    torch::NoGradGuard no_grad;
    for (auto& item : models.text_encoder->named_parameters())
      if (item.key().find("embedding") != std::string::npos) item.value().normal_(0.0, 0.02);
  }

  say(console, fmt::format("demo base 1/2: the VAE learns to draw every look of the world ({} steps)",
                           options.vae_steps));
  const auto pictures = torch::cat({load_pictures(world.plain), load_pictures(world.looks)});
  std::ostream discard(nullptr);
  ProgressBar bar(console ? *console : discard, "vae", options.vae_steps);
  VaeTrainingOptions vae;
  vae.steps = options.vae_steps;
  vae.seed = options.seed;
  vae.crop = std::min<int64_t>(32, world.size.size);
  const double mse = train_vae(models.vae, pictures, vae, [&](int64_t step, double loss) {
    bar.update(step, fmt::format("mse {:.4f}", loss));
  });
  bar.finish();
  const double factor = normalise_latent_scale(models.vae, pictures);
  say(console, fmt::format("  reconstruction MSE {:.4f} (images in [-1, 1]); latent scale x{:.3f}", mse, factor));

  const fs::path init = work_dir / "init";
  write_checkpoint(checkpoint_from_models(models), init, CheckpointLayout::Diffusers);

  say(console, fmt::format("demo base 2/2: text encoder and UNet learn the world ({} epochs)", options.epochs));
  RunConfig run;
  run.model.checkpoint = init.string();
  run.data.folders = {{world.plain.string(), 1}};
  run.data.resolution = world.size.size;
  run.data.buckets = false;
  run.data.batch_size = options.batch_size;
  run.data.random_flip = true;
  // Guidance needs an unconditional prediction: the empty caption must be trained too.
  run.data.caption_dropout = 0.1;
  for (PartSection* part : {static_cast<PartSection*>(&run.text_encoder), &run.unet}) {
    part->train = true;
    part->lr = options.lr;
    part->schedule = "cosine";
    part->warmup_steps = 20;
    part->weight_decay = 0.0;
  }
  // Min-SNR weighting (Hang et al. 2023) converges several times faster when training from scratch.
  run.loss.min_snr_gamma = 5.0;
  run.training.seed = options.seed;
  run.training.epochs = options.epochs;
  run.validation.split = 0.0;
  run.validation.every_epochs = 0;
  run.validation.stabilize_items = 0;
  run.checkpoints.dtype = "fp32";
  run.checkpoints.layout = "diffusers";
  run.logging.tensorboard = false;
  validate(run, "demo base");
  const fs::path run_dir = work_dir / "base-run";
  fs::remove_all(run_dir);
  TrainOptions train_options;
  train_options.run_dir = run_dir;
  train_options.console = console;
  const auto result = train(run, train_options);
  if (result.checkpoints.empty()) throw Error("demo base: the training run wrote no checkpoint");

  // The last checkpoint becomes the base, renamed into place so a half-written base never exists.
  const fs::path staged = out.string() + ".partial";
  fs::remove_all(staged);
  fs::create_directories(out.parent_path().empty() ? fs::path(".") : out.parent_path());
  fs::rename(result.checkpoints.back(), staged);
  fs::remove_all(out);
  fs::rename(staged, out);
  // The base run's logs stay for its report; the initial weights and the resume state (several times
  // the model's size) are of no further use.
  fs::remove_all(init);
  for (const auto& entry : fs::directory_iterator(run_dir / "checkpoints"))
    if (entry.path().filename().string().ends_with(".state.safetensors")) fs::remove(entry.path());
}

}  // namespace kiln
