#include "diffusion/sampler.h"

#include "diffusion/ddim.h"
#include "diffusion/dpmpp_2m.h"
#include "diffusion/euler.h"
#include "diffusion/euler_ancestral.h"
#include "diffusion/heun.h"
#include "util/error.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace kiln {

std::vector<std::string> sampler_names() {
  return {"ddim", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras"};
}

std::unique_ptr<Sampler> make_sampler(const std::string& name, const NoiseSchedule& schedule,
                                      SamplerOptions o) {
  // Defaults follow what diffusers resolves from SD 1.5's scheduler config for each class.
  auto spacing = [&](TimestepSpacing fallback) {
    return o.spacing.empty() ? fallback : parse_spacing(o.spacing);
  };
  if (name == "ddim")
    return std::make_unique<DDIMSampler>(schedule, o.steps, spacing(TimestepSpacing::Leading));
  if (name == "euler")
    return std::make_unique<EulerSampler>(schedule, o.steps, spacing(TimestepSpacing::Linspace), o.karras);
  if (name == "euler_a")
    return std::make_unique<EulerAncestralSampler>(schedule, o.steps, spacing(TimestepSpacing::Linspace),
                                                   o.karras);
  if (name == "dpmpp_2m" || name == "dpmpp_2m_karras")
    return std::make_unique<DPMPP2MSampler>(schedule, o.steps, spacing(TimestepSpacing::Linspace),
                                            o.karras || name == "dpmpp_2m_karras");
  if (name == "heun")
    return std::make_unique<HeunSampler>(schedule, o.steps, spacing(TimestepSpacing::Linspace), o.karras);
  throw Error(fmt::format("unknown sampler '{}' ({})", name, fmt::join(sampler_names(), ", ")));
}

}  // namespace kiln
