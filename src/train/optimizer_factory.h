// Builds the optimizers a run's settings ask for. AdamW, 8-bit AdamW, Lion and SGD get one
// instance per trained part. D-Adaptation Adam and Prodigy estimate one step size d from all the
// parameters they see: when both parts use the same one, they share it as two groups, and two
// different learning rates become per-group layer scales (what dadaptation offers instead of
// per-group rates), so a "decoupled" experiment still works with them.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "train/optimizer.h"
#include "train/run_config.h"

namespace kiln {

std::vector<std::string> optimizer_names();  // adamw, adamw8bit, lion, sgd, dadapt_adam, prodigy

struct TrainedPart {
  std::string name;  // "text_encoder" | "unet"
  const PartSection* settings = nullptr;
  std::vector<NamedParameter> parameters;
};

struct PartOptimizers {
  struct Entry {
    std::unique_ptr<Optimizer> optimizer;
    std::vector<std::string> parts;  // the parts it updates
    std::string state_prefix;        // "text_encoder", "unet" or "shared"
    double base_lr = 0;              // the schedule's peak value (common lr when shared)
    const PartSection* schedule_from = nullptr;
  };
  std::vector<Entry> entries;
  std::vector<std::string> notes;  // what the user should know (e.g. lrs turned into layer scales)
  Optimizer* of_part(const std::string& part) const;
};

PartOptimizers make_optimizers(std::vector<TrainedPart> parts);

}  // namespace kiln
