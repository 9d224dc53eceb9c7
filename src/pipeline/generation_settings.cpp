#include "pipeline/generation_settings.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "diffusion/sampler.h"
#include "util/error.h"

namespace kiln {

void validate(const GenerationSettings& s) {
  for (const auto& [name, value] : {std::pair{"width", s.width}, std::pair{"height", s.height}}) {
    if (value <= 0 || value % 8 != 0)
      throw Error(fmt::format("{} {} is not a positive multiple of 8 (the VAE works on 8x8 pixel blocks)",
                              name, value));
  }
  if (s.steps < 1) throw Error(fmt::format("steps must be at least 1 (got {})", s.steps));
  if (!std::isfinite(s.cfg) || s.cfg < 0) throw Error(fmt::format("cfg {} must be a number >= 0", s.cfg));
  if (s.clip_skip < 1) throw Error(fmt::format("clip skip must be at least 1 (got {})", s.clip_skip));
  if (s.batch < 1) throw Error(fmt::format("batch must be at least 1 (got {})", s.batch));
  const auto names = sampler_names();
  const bool known = std::find(names.begin(), names.end(), s.sampler) != names.end();
  if (!known) throw Error(fmt::format("unknown sampler '{}' ({})", s.sampler, fmt::join(names, ", ")));
  if (!s.spacing.empty()) parse_spacing(s.spacing);
  if (!s.prediction.empty()) parse_prediction(s.prediction);
}

}  // namespace kiln
