#include "train/run_seeds.h"

#include <ATen/CPUGeneratorImpl.h>

namespace kiln {

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t derive_seed(uint64_t run_seed, RandomStream stream, uint64_t a, uint64_t b) {
  uint64_t h = splitmix64(run_seed);
  h = splitmix64(h ^ static_cast<uint64_t>(stream));
  h = splitmix64(h ^ a);
  return splitmix64(h ^ b);
}

at::Generator make_generator(uint64_t run_seed, RandomStream stream, uint64_t a, uint64_t b) {
  return at::detail::createCPUGenerator(derive_seed(run_seed, stream, a, b));
}

}  // namespace kiln
