// A diffusers model's scheduler/scheduler_config.json read into kiln's noise schedule, and written
// back out as SD 1.5 ships it (PNDMScheduler). Only what changes sampling is kept: the β range and
// count, steps_offset, timestep_spacing and prediction_type.
#pragma once
#include <filesystem>

#include <nlohmann/json.hpp>

#include "diffusion/noise_schedule.h"

namespace kiln {

// Keys the file leaves out keep SD 1.5's values (timestep_spacing: unstated). What kiln cannot
// sample from — another beta_schedule, explicit trained_betas, a prediction_type other than
// epsilon or v_prediction, an unknown spacing — throws kiln::Error naming the file and the key.
NoiseScheduleConfig read_scheduler_config(const std::filesystem::path& file);

// The scheduler config of a model folder kiln writes: SD 1.5's PNDM config with `config`'s values
// ("leading" spacing when it states none, as SD 1.5's own pipelines resolve it).
nlohmann::json scheduler_config_json(const NoiseScheduleConfig& config);

}  // namespace kiln
