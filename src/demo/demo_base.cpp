#include "demo/demo_base.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>

#include "data/image_file.h"
#include "data/synthetic.h"
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

namespace {

// Stage 1: the VAE learns every look of the world; the rest starts from torch's initialisers.
// Written to `init` (a diffusers folder).
void train_initial_model(const DemoWorld& world, const fs::path& init, const DemoBaseOptions& options,
                         std::ostream* console) {
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
  std::vector<torch::Tensor> sets{load_pictures(world.plain)};
  for (const auto& look : synthetic_style_looks()) sets.push_back(load_pictures(world.looks / look.name));
  const auto pictures = torch::cat(sets);
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
  const fs::path staged = init.string() + ".partial";
  fs::remove_all(staged);
  write_checkpoint(checkpoint_from_models(models), staged, CheckpointLayout::Diffusers);
  fs::rename(staged, init);
}

}  // namespace

RunConfig demo_base_run_config(const DemoWorld& world, const fs::path& init, const DemoBaseOptions& options) {
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
  run.training.ema_decay = options.ema_decay;
  run.validation.split = 0.0;
  run.validation.every_epochs = 0;
  run.validation.stabilize_items = 0;
  run.checkpoints.every_epochs = options.checkpoint_every;
  run.checkpoints.keep_last_states = 1;
  run.checkpoints.dtype = "fp32";
  run.checkpoints.layout = "diffusers";
  run.logging.tensorboard = false;
  run.diagnose.warn = false;  // no sample prompts to watch
  validate(run, "demo base");
  return run;
}

void train_demo_base(const DemoWorld& world, const fs::path& work_dir, const fs::path& out,
                     const DemoBaseOptions& options, std::ostream* console) {
  fs::create_directories(work_dir);
  const fs::path init = work_dir / "init", run_dir = work_dir / "base-run";
  const bool resume = fs::is_regular_file(run_dir / "run.toml") && fs::is_directory(run_dir / "checkpoints") &&
                      std::any_of(fs::directory_iterator(run_dir / "checkpoints"), fs::directory_iterator(),
                                  [](const fs::directory_entry& e) {
                                    return e.path().filename().string().ends_with(".state.safetensors");
                                  });
  if (!fs::is_regular_file(init / "model_index.json")) {
    fs::remove_all(run_dir);  // a run of other initial weights
    train_initial_model(world, init, options, console);
  }
  say(console, fmt::format("demo base 2/2: text encoder and UNet learn the world ({} epochs{})", options.epochs,
                           resume ? ", resumed" : ""));
  if (!resume) fs::remove_all(run_dir);
  TrainOptions train_options;
  train_options.run_dir = run_dir;
  train_options.resume = resume;
  train_options.console = console;
  const auto result = train(demo_base_run_config(world, init, options), train_options);
  if (result.interrupted) throw Error("demo base: training interrupted; run again to resume it from " + run_dir.string());
  if (result.checkpoints.empty()) throw Error("demo base: the training run wrote no checkpoint");

  // The last checkpoint (its moving average when kept) becomes the base, renamed into place so a
  // half-written base never exists.
  fs::path trained = result.checkpoints.back();
  if (options.ema_decay > 0) trained = trained.string() + "-ema";
  const fs::path staged = out.string() + ".partial";
  fs::remove_all(staged);
  fs::create_directories(out.parent_path().empty() ? fs::path(".") : out.parent_path());
  fs::rename(trained, staged);
  fs::remove_all(out);
  fs::rename(staged, out);
  // The base run's logs stay for its report; the initial weights and the resume state (several times
  // the model's size) are of no further use.
  fs::remove_all(init);
  for (const auto& entry : fs::directory_iterator(run_dir / "checkpoints"))
    if (entry.path().filename().string().ends_with(".state.safetensors")) fs::remove(entry.path());
}

}  // namespace kiln
