// Where a run's randomness comes from. Every random draw — data order, caption shuffles, flips,
// noise, timesteps, validation noise — comes from a torch CPU generator seeded by a hash of the
// run seed and the draw's coordinates (epoch, batch, item). So the noise a batch sees depends only
// on the seed and the data, never on learning rates or which parts train (controlled experiments),
// and a resumed run needs no saved RNG state: its position (epoch, batch) is enough.
#pragma once
#include <ATen/core/Generator.h>

#include <cstdint>
#include <string_view>

namespace kiln {

enum class RandomStream : uint64_t {
  DataOrder = 1,
  Caption = 2,
  Flip = 3,
  Noise = 4,
  Validation = 5,
  Crop = 6,
  Latent = 7,
  Selection = 8,  // which pictures are held out or watched by the stabilised loss
  Lora = 9,       // initial LoRA down-projections
};

// A 64-bit seed for one stream at one coordinate (splitmix64 over the parts).
uint64_t derive_seed(uint64_t run_seed, RandomStream stream, uint64_t a = 0, uint64_t b = 0);
at::Generator make_generator(uint64_t run_seed, RandomStream stream, uint64_t a = 0, uint64_t b = 0);

}  // namespace kiln
