// The name lists run_config.cpp validates against live in torch-linked files (sampler.cpp,
// optimizer_factory.cpp); the fuzz build is torch-free, so it carries copies. CMake checks at
// configure time that the copies still match the originals (see CMakeLists.txt).
#include <string>
#include <vector>

namespace kiln {

std::vector<std::string> sampler_names() {
  return {"ddim", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras"};
}

std::vector<std::string> optimizer_names() {
  return {"adamw", "adamw8bit", "lion", "sgd", "dadapt_adam", "prodigy"};
}

}  // namespace kiln
