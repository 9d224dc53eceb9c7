#include "io/scheduler_config.h"

#include <fstream>

#include "util/error.h"

namespace kiln {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

template <typename T>
void read_key(const json& j, const char* key, T& into, const fs::path& file) {
  if (!j.contains(key) || j[key].is_null()) return;
  try {
    into = j[key].get<T>();
  } catch (const json::exception&) {
    throw_file_error(file, std::string("scheduler config key '") + key + "' has the wrong type: " + j[key].dump());
  }
}

}  // namespace

NoiseScheduleConfig read_scheduler_config(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw_file_error(file, "cannot read the scheduler config");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw_file_error(file, std::string("not valid JSON: ") + e.what());
  }
  NoiseScheduleConfig c;
  read_key(j, "num_train_timesteps", c.num_train_timesteps, file);
  read_key(j, "beta_start", c.beta_start, file);
  read_key(j, "beta_end", c.beta_end, file);
  read_key(j, "steps_offset", c.steps_offset, file);
  read_key(j, "timestep_spacing", c.timestep_spacing, file);
  std::string beta_schedule = "scaled_linear", prediction = "epsilon";
  read_key(j, "beta_schedule", beta_schedule, file);
  read_key(j, "prediction_type", prediction, file);
  const auto refuse = [&](const std::string& what) { throw_file_error(file, what); };
  if (beta_schedule != "scaled_linear")
    refuse("beta_schedule '" + beta_schedule + "': kiln samples SD 1.x's scaled_linear schedule only");
  if (j.contains("trained_betas") && !j["trained_betas"].is_null())
    refuse("trained_betas: kiln samples SD 1.x's scaled_linear schedule only");
  if (prediction != "epsilon" && prediction != "v_prediction")
    refuse("prediction_type '" + prediction + "': kiln samples epsilon and v_prediction models");
  c.prediction = parse_prediction(prediction);
  if (!c.timestep_spacing.empty()) {
    try {
      parse_spacing(c.timestep_spacing);
    } catch (const Error& e) {
      refuse(std::string("timestep_spacing: ") + e.what());
    }
  }
  if (c.num_train_timesteps < 2 || c.steps_offset < 0 || !(c.beta_start > 0) || !(c.beta_end > c.beta_start))
    refuse("num_train_timesteps, steps_offset or the beta range is out of range");
  return c;
}

json scheduler_config_json(const NoiseScheduleConfig& c) {
  return {{"_class_name", "PNDMScheduler"},
          {"_diffusers_version", "0.30.3"},
          {"beta_end", c.beta_end},
          {"beta_schedule", "scaled_linear"},
          {"beta_start", c.beta_start},
          {"clip_sample", false},
          {"num_train_timesteps", c.num_train_timesteps},
          {"prediction_type", prediction_name(c.prediction)},
          {"set_alpha_to_one", false},
          {"skip_prk_steps", true},
          {"steps_offset", c.steps_offset},
          {"timestep_spacing", c.timestep_spacing.empty() ? "leading" : c.timestep_spacing},
          {"trained_betas", nullptr}};
}

}  // namespace kiln
