#include "demo/world_drawing.h"

#include <fmt/format.h>

#include <torch/torch.h>

#include <fstream>

#include "data/image_file.h"
#include "data/synthetic.h"
#include "image/font.h"
#include "image/grid.h"
#include "image/png.h"
#include "pipeline/loaded_model.h"
#include "pipeline/txt2img.h"
#include "util/error.h"

namespace kiln {

std::vector<std::string> world_prompts() {
  std::vector<std::string> out;
  for (const auto& colour : synthetic_shape_colors())
    for (const auto shape : synthetic_shapes())
      for (const auto& background : synthetic_backgrounds())
        if (synthetic_colours_contrast(colour.name, background.name))
          out.push_back(fmt::format("a {} {}, {} background", colour.name, shape, background.name));
  return out;
}

namespace {

// One row per colour and shape, one column per background and seed; pairings the world never
// draws (a shape on its own colour) stay blank.
void write_sheet(const std::filesystem::path& path, const std::vector<WorldPrompt>& prompts,
                 const std::vector<std::vector<Image>>& pictures, const std::vector<uint64_t>& seeds) {
  GridLayout layout;
  std::vector<std::vector<Image>> cells;
  const Image& any = pictures.front().front();
  for (const auto& background : synthetic_backgrounds())
    for (const uint64_t seed : seeds) layout.column_labels.push_back(fmt::format("{} bg, seed {}", background.name, seed));
  for (const auto& colour : synthetic_shape_colors())
    for (const auto shape : synthetic_shapes()) {
      layout.row_labels.push_back(fmt::format("{} {}", colour.name, shape));
      cells.emplace_back();
      for (const auto& background : synthetic_backgrounds())
        for (size_t s = 0; s < seeds.size(); ++s) {
          Image cell(any.width, any.height, Rgb{235, 235, 235});
          for (size_t p = 0; p < prompts.size(); ++p)
            if (prompts[p].colour == colour.name && prompts[p].shape == shape && prompts[p].background == background.name)
              cell = pictures[p][s];
          cells.back().push_back(std::move(cell));
        }
    }
  write_png(path, make_grid(cells, layout, Font::load_default()));
}

}  // namespace

PromptAdherence score_world_drawing(const WorldDrawingRequest& r) {
  if (r.seeds.empty()) throw Error("score_world_drawing: no seeds");
  auto model = load_model(r.model, r.config, false);
  to_device(model.models, r.device);
  Txt2Img txt2img(model);
  const auto prompts = r.prompts.empty() ? world_prompts() : r.prompts;
  std::vector<std::pair<WorldPrompt, Image>> cells;
  std::vector<WorldPrompt> parsed;
  std::vector<std::vector<Image>> pictures;
  for (const auto& prompt : prompts) {
    const auto world = parse_world_prompt(prompt);
    if (!world) throw Error("score_world_drawing: not a world prompt: \"" + prompt + "\"");
    parsed.push_back(*world);
    pictures.emplace_back();
    for (const uint64_t seed : r.seeds) {
      auto s = r.settings;
      s.prompt = prompt;
      s.seed = seed;
      for (auto& image : txt2img.generate(s)) {
        cells.emplace_back(*world, image);
        pictures.back().push_back(std::move(image));
      }
    }
  }
  if (r.sheet) write_sheet(*r.sheet, parsed, pictures, r.seeds);
  return prompt_adherence(cells, r.style_rim);
}

PromptAdherence score_vae_round_trip(const std::filesystem::path& model_path, const std::filesystem::path& scratch,
                                     int count, int size) {
  namespace fs = std::filesystem;
  write_synthetic_dataset(scratch, count, size, 4242);
  auto model = load_model(model_path, std::nullopt, false);
  torch::NoGradGuard no_grad;
  std::vector<std::pair<WorldPrompt, Image>> cells;
  for (int i = 0; i < count; ++i) {
    const fs::path png = scratch / fmt::format("{:04}.png", i);
    std::ifstream caption_file(fs::path(png).replace_extension(".txt"));
    std::string caption;
    std::getline(caption_file, caption);
    Image picture = load_image(png);
    const auto x = torch::from_blob(picture.pixels.data(), {1, size, size, 3}, torch::kUInt8)
                       .permute({0, 3, 1, 2})
                       .to(torch::kFloat32) /
                       127.5 -
                   1.0;
    const auto decoded = model.models.vae->decode(model.models.vae->encode(x).mean);
    cells.emplace_back(*parse_world_prompt(caption), image_from_tensor(decoded[0]));
  }
  return prompt_adherence(cells);
}

}  // namespace kiln
