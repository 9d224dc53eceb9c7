#include "demo/demo_world.h"

#include <fmt/format.h>

#include <fstream>
#include <iterator>

#include "data/synthetic.h"
#include "util/atomic_file.h"

namespace kiln {

namespace {

namespace fs = std::filesystem;

int count_pictures(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return -1;
  int n = 0;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".png") ++n;
  return n;
}

std::string read_text_if_exists(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

DemoWorld write_demo_world(const fs::path& dir, const DemoWorldSize& size) {
  DemoWorld world{dir / "plain", dir / "style", dir / "looks", size};
  // A world written with other sizes is written again (the counts alone cannot tell).
  const fs::path stamp = dir / "world.txt";
  const std::string recipe = fmt::format("size {} shapes {}-{}\n", size.size, size.shapes.min, size.shapes.max);
  if (read_text_if_exists(stamp) != recipe) {
    for (const auto& d : {world.plain, world.style, world.looks}) fs::remove_all(d);
    fs::create_directories(dir);
    write_text_atomically(stamp, recipe);
  }
  // Seeds fixed here so every demo run sees the same world.
  if (count_pictures(world.plain) != size.plain_count) {
    fs::remove_all(world.plain);
    write_synthetic_dataset(world.plain, size.plain_count, size.size, 7, size.shapes);
  }
  if (count_pictures(world.style) != size.style_count) {
    fs::remove_all(world.style);
    write_style_dataset(world.style, size.style_count, size.size, 26, kDemoActivationPhrase,
                        synthetic_style_looks().front(), size.shapes);
  }
  // Every look of the world (the benchmark's too), each in a folder of its own.
  uint64_t seed = 1026;
  for (const auto& look : synthetic_style_looks()) {
    if (size.look_count == 0) break;
    const fs::path dir = world.looks / look.name;
    if (count_pictures(dir) != size.look_count) {
      fs::remove_all(dir);
      write_style_dataset(dir, size.look_count, size.size, seed, kDemoActivationPhrase, look, size.shapes);
    }
    ++seed;
  }
  return world;
}

std::vector<PromptSet> demo_prompt_sets() {
  const auto styled = [](std::string_view subject) {
    return std::string(kDemoActivationPhrase).append(", ").append(subject);
  };
  return {
      {"subject", "Subject without the activation phrase",
       {"a red circle, white background", "a blue square, grey background", "a yellow triangle, black background"}},
      {"bw-circles", "Black and white circles", {"black and white circles"}},
      {"styled", "Subject with the activation phrase",
       {styled("a green triangle"), styled("a yellow circle")}},
  };
}

std::vector<std::string> demo_control_prompts() {
  std::vector<std::string> out;
  for (const auto& set : demo_prompt_sets())
    if (set.name != "styled") out.insert(out.end(), set.prompts.begin(), set.prompts.end());
  // More subjects than a grid has room for: prompt adherence is a fraction of cells, and a few
  // cells make it a coin toss.
  for (const char* subject : {"a green square, white background", "a white circle, black background",
                              "a black triangle, grey background"})
    out.emplace_back(subject);
  return out;
}

std::vector<std::string> demo_diagnosis_prompts() {
  auto out = demo_control_prompts();
  for (const auto& set : demo_prompt_sets())
    if (set.name == "styled") out.insert(out.end(), set.prompts.begin(), set.prompts.end());
  return out;
}

std::vector<std::string> demo_prompts() {
  std::vector<std::string> out;
  for (const auto& set : demo_prompt_sets()) out.insert(out.end(), set.prompts.begin(), set.prompts.end());
  return out;
}

}  // namespace kiln
