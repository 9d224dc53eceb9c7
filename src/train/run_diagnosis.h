// `kiln diagnose RUN_DIR`: what a kiln run folder says about how to diagnose it.
#pragma once
#include <filesystem>

#include "lab/diagnosis.h"

namespace kiln {

// The request for a kiln run folder: its base model, checkpoints (not -ema), training folders,
// activation phrase and sample settings (run.toml).
DiagnosisRequest diagnosis_request_for_run(const std::filesystem::path& run_dir);

}  // namespace kiln
