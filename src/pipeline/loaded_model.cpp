#include "pipeline/loaded_model.h"

#include "io/checkpoint.h"
#include "io/key_map.h"
#include "util/error.h"
#include "util/sha256.h"

namespace kiln {

LoadedModel load_model(const std::filesystem::path& path, const std::optional<std::filesystem::path>& config,
                       bool hash) {
  if (!std::filesystem::exists(path)) throw_file_error(path, "no such model file or folder");
  if (std::filesystem::is_regular_file(path) && std::filesystem::file_size(path) == 0)
    throw_file_error(path, "the model file is empty");
  const Checkpoint checkpoint = read_checkpoint(path, config);
  for (const auto component : {Component::UNet, Component::TextEncoder, Component::VAE})
    if (!checkpoint.has(component))
      throw_file_error(path, "has no " + std::string(component_name(component)) +
                                 " weights; generating needs the UNet, text encoder and VAE");
  const bool folder = std::filesystem::is_directory(path);
  auto tokenizer = folder && std::filesystem::exists(path / "tokenizer" / "vocab.json")
                       ? CLIPTokenizer::from_folder(path / "tokenizer")
                       : CLIPTokenizer::from_embedded();
  ModelIdentity identity{folder ? path.filename().string() : path.stem().string(), ""};
  if (!folder && hash) identity.short_hash = sha256_file(path).substr(0, 10);
  return LoadedModel{path, build_models(checkpoint), std::move(tokenizer), identity, checkpoint.scheduler};
}

}  // namespace kiln
