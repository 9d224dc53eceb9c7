#include "train/training_data.h"

#include <torch/torch.h>

#include <fmt/format.h>

#include <map>

#include "data/buckets.h"
#include "data/dataset_scan.h"
#include "train/run_seeds.h"
#include "util/error.h"

namespace kiln {

namespace {

std::vector<std::pair<int, int>> bucket_list(const DataSection& d) {
  if (!d.buckets) {
    const int side = static_cast<int>(d.resolution);
    return {{side, side}};
  }
  return make_buckets({static_cast<int>(d.resolution), static_cast<int>(d.min_bucket),
                       static_cast<int>(d.max_bucket), static_cast<int>(d.bucket_step)});
}

std::vector<int64_t> permutation(int64_t n, at::Generator generator) {
  const auto perm = torch::randperm(n, generator, torch::kLong);
  return {perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + n};
}

}  // namespace

TrainingData prepare_training_data(const RunConfig& config, std::ostream& warnings) {
  const auto& d = config.data;
  const auto buckets = bucket_list(d);
  auto to_item = [&](const DataItem& item, int64_t index) {
    return TrainingItem{item.image, item.caption, choose_bucket(item.width, item.height, buckets), index};
  };
  // Scan each folder once (repeats 1) and expand repeats ourselves, so the split works on pictures.
  std::vector<std::pair<DataItem, int64_t>> pictures;  // item, repeats
  for (const auto& folder : d.folders) {
    const auto items = scan_folders({{folder.path, 1}}, d.skip_bad_files, warnings);
    for (const auto& item : items) pictures.emplace_back(item, folder.repeats);
  }
  TrainingData data;
  std::vector<bool> held_out(pictures.size(), false);
  if (config.validation.folder.empty() && config.validation.split > 0) {
    const auto count = static_cast<int64_t>(config.validation.split * static_cast<double>(pictures.size()));
    const auto order = permutation(static_cast<int64_t>(pictures.size()),
                                   make_generator(config.training.seed, RandomStream::Selection, 1));
    for (int64_t i = 0; i < count; ++i) held_out[static_cast<size_t>(order[static_cast<size_t>(i)])] = true;
  }
  for (size_t i = 0; i < pictures.size(); ++i) {
    const auto& [item, repeats] = pictures[i];
    if (held_out[i]) {
      data.validation.push_back(to_item(item, static_cast<int64_t>(i)));
      continue;
    }
    ++data.unique_train_images;
    for (int64_t r = 0; r < repeats; ++r) data.train.push_back(to_item(item, static_cast<int64_t>(i)));
  }
  if (!config.validation.folder.empty()) {
    const auto items = scan_folders({{config.validation.folder, 1}}, d.skip_bad_files, warnings);
    for (size_t i = 0; i < items.size(); ++i)
      data.validation.push_back(to_item(items[i], static_cast<int64_t>(pictures.size() + i)));
  }
  if (data.train.empty()) throw Error("no training images left (every picture was held out for validation)");
  return data;
}

std::vector<std::vector<size_t>> epoch_batches(const std::vector<TrainingItem>& items, int64_t batch_size,
                                               uint64_t seed, int64_t epoch) {
  std::map<std::pair<int, int>, std::vector<size_t>> by_bucket;
  const auto order = permutation(static_cast<int64_t>(items.size()),
                                 make_generator(seed, RandomStream::DataOrder, static_cast<uint64_t>(epoch)));
  for (auto i : order) by_bucket[items[static_cast<size_t>(i)].bucket].push_back(static_cast<size_t>(i));
  std::vector<std::vector<size_t>> batches;
  for (const auto& [bucket, indices] : by_bucket)
    for (size_t start = 0; start < indices.size(); start += static_cast<size_t>(batch_size))
      batches.emplace_back(indices.begin() + static_cast<std::ptrdiff_t>(start),
                           indices.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                 indices.size(), start + static_cast<size_t>(batch_size))));
  // Buckets are visited in a shuffled order too, so no bucket always comes last.
  const auto batch_order =
      permutation(static_cast<int64_t>(batches.size()),
                  make_generator(seed, RandomStream::DataOrder, static_cast<uint64_t>(epoch), 1));
  std::vector<std::vector<size_t>> shuffled;
  for (auto b : batch_order) shuffled.push_back(std::move(batches[static_cast<size_t>(b)]));
  return shuffled;
}

}  // namespace kiln
