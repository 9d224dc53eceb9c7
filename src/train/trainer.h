// `kiln train`: full fine-tuning of the text encoder and the UNet with separate settings, run by
// run: validation and stabilised losses, checkpoints every N epochs with what exact resume needs,
// samples at each checkpoint, JSONL + TensorBoard logs, a progress line.
//
// A run folder holds:
//   run.toml                       the resolved settings (rewritten when a run is resumed)
//   checkpoints/e0005.safetensors  SD 1.x checkpoints (the run's settings in their metadata)
//   checkpoints/e0005.state.safetensors  fp32 weights of the trained parts + optimizer state
//   samples/e0005/NN-SEED.png      checkpoint samples, A1111 parameters inside
//   metrics.jsonl, tensorboard/    every logged value
//   latent-cache/                  VAE latents of the training images
#pragma once
#include <filesystem>
#include <functional>
#include <optional>
#include <ostream>
#include <vector>

#include <torch/types.h>

#include "train/run_config.h"

namespace kiln {

class DataParallelGroup;

struct TrainOptions {
  std::filesystem::path run_dir;
  bool resume = false;                             // continue from the newest state in run_dir
  std::optional<std::filesystem::path> init_from;  // start from this checkpoint instead of model.checkpoint
  std::ostream* console = nullptr;                 // progress and messages (null: quiet)
  // Polled between optimizer steps; true saves a checkpoint and stops (Ctrl-C).
  std::function<bool()> stop_requested;
  torch::Device device = torch::kCPU;  // where the networks train (latents stay cached in CPU memory)
  // This process's data-parallel group (null: one process). data.batch_size is per process: each
  // global batch of batch_size × world_size items is split across the ranks, gradients are summed
  // before every update, and only the main rank writes checkpoints, samples and logs.
  DataParallelGroup* group = nullptr;
  // Called on every rank after each optimizer step with the trained tensors (weights or LoRA
  // matrices) in a fixed order: for monitoring, and for tests that compare ranks step by step.
  std::function<void(int64_t global_step, const std::vector<torch::Tensor>& trained)> after_step;
};

struct TrainResult {
  int64_t epochs_done = 0;
  int64_t global_step = 0;
  std::vector<std::filesystem::path> checkpoints;  // written in this session
  bool interrupted = false;
  bool stopped_burnt = false;  // diagnose.stop_when_burnt ended the run early
};

TrainResult train(const RunConfig& config, const TrainOptions& options);

// The newest resume state in a run folder (by global step); kiln::Error when there is none.
std::filesystem::path latest_state(const std::filesystem::path& run_dir);

}  // namespace kiln
