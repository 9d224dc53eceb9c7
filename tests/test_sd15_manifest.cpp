// A full-size SD 1.5 model built by kiln has exactly the tensor names and shapes of the reference
// manifests, in the LDM single-file layout and in the diffusers folder layout.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "io/checkpoint.h"
#include "models/model_loading.h"

namespace kiln {
namespace {

nlohmann::json read_manifest(const std::string& name) {
  std::ifstream in(std::string(KILN_GOLDEN_DIR) + "/manifests/" + name);
  return nlohmann::json::parse(in);
}

TEST(SD15Manifest, BothLayoutsHaveExactlyTheReferenceKeysAndShapes) {
  torch::NoGradGuard no_grad;
  const StableDiffusionModels models(sd15_configs());  // ~4.3 GB of fp32 weights
  // Views of the modules' own tensors: no copy of the 1.07 B parameters.
  Checkpoint ckpt;
  ckpt.configs = models.configs;
  ckpt.unet = state_dict(*models.unet);
  ckpt.text_encoder = state_dict(*models.text_encoder);
  ckpt.vae = state_dict(*models.vae);

  const auto ldm = ldm_state_dict(ckpt);
  const auto ldm_manifest = read_manifest("sd15-ldm-keys.json");
  ASSERT_EQ(ldm.size(), ldm_manifest["tensors"].size());
  EXPECT_EQ(ldm.size(), 1131u);
  for (const auto& t : ldm_manifest["tensors"]) {
    const std::string name = t["name"];
    ASSERT_TRUE(ldm.count(name)) << name;
    EXPECT_EQ(ldm.at(name).sizes().vec(), t["shape"].get<std::vector<int64_t>>()) << name;
    EXPECT_EQ(ldm.at(name).scalar_type(), t["dtype"] == "I64" ? torch::kLong : torch::kFloat32) << name;
  }

  const auto diffusers_manifest = read_manifest("sd15-diffusers-keys.json");
  size_t listed = 0;
  for (const auto& t : diffusers_manifest["tensors"]) {
    const std::string file = t["file"], name = t["name"];
    const auto c = file.rfind("unet/", 0) == 0  ? Component::UNet
                   : file.rfind("vae/", 0) == 0 ? Component::VAE
                                                : Component::TextEncoder;
    EXPECT_EQ(diffusers_weights_file(c).string(), file);
    const auto& dict = ckpt.component(c);
    ASSERT_TRUE(dict.count(name)) << file << ": " << name;
    EXPECT_EQ(dict.at(name).sizes().vec(), t["shape"].get<std::vector<int64_t>>()) << name;
    ++listed;
  }
  EXPECT_EQ(listed, ckpt.unet.size() + ckpt.text_encoder.size() + ckpt.vae.size());

  // Parameter counts as the manifest states them.
  auto count = [](const StateDict& d) {
    int64_t n = 0;
    for (const auto& [k, v] : d) n += v.numel();
    return n;
  };
  EXPECT_EQ(count(ckpt.unet), ldm_manifest["parameter_counts"]["unet"].get<int64_t>());
  EXPECT_EQ(count(ckpt.text_encoder), ldm_manifest["parameter_counts"]["text_encoder"].get<int64_t>());
  EXPECT_EQ(count(ckpt.vae), ldm_manifest["parameter_counts"]["vae"].get<int64_t>());
}

}  // namespace
}  // namespace kiln
