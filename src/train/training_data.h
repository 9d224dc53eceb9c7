// The images a run trains and validates on: folders scanned, captions read, each image given its
// aspect-ratio bucket, a seeded validation split, and each epoch's batches (same-bucket images
// together, order from the run seed and the epoch alone).
#pragma once
#include <filesystem>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "train/run_config.h"

namespace kiln {

struct TrainingItem {
  std::filesystem::path image;
  std::string caption;         // as read from the sidecar, before tag processing
  std::pair<int, int> bucket;  // width, height in pixels
  int64_t image_index = 0;     // the same for every repeat of one picture
};

struct TrainingData {
  std::vector<TrainingItem> train;       // repeats expanded
  std::vector<TrainingItem> validation;  // each picture once
  int64_t unique_train_images = 0;
};

// Throws kiln::Error naming the folder or file for empty folders, unreadable images and captions
// (unless data.skip_bad_files, which turns them into warnings), and an empty training set.
TrainingData prepare_training_data(const RunConfig& config, std::ostream& warnings);

// Batches of indices into `items` for one epoch: every item once, batches never mix buckets.
std::vector<std::vector<size_t>> epoch_batches(const std::vector<TrainingItem>& items, int64_t batch_size,
                                               uint64_t seed, int64_t epoch);

}  // namespace kiln
