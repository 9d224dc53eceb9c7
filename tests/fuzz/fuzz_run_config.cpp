// libFuzzer target for the TOML run file: parse_run_config(text, "fuzz.toml", {}) either returns a
// config or throws kiln::Error (any other exception escapes and is reported). An accepted config
// must round-trip: to_toml(parse(to_toml(c))) == to_toml(c), and that re-parse must not throw.
// Error messages must be valid UTF-8 when the run file is.
#include <cstdint>
#include <cstdio>
#include <string>

#include "fuzz_utf8.h"
#include "train/run_config.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  kiln::RunConfig config;
  try {
    config = kiln::parse_run_config(text, "fuzz.toml", {});
  } catch (const kiln::Error& e) {
    if (kiln_fuzz::valid_utf8(text) && !kiln_fuzz::valid_utf8(e.what())) __builtin_trap();
    return 0;
  }
  const std::string once = kiln::to_toml(config);
  std::string twice;
  try {
    twice = kiln::to_toml(kiln::parse_run_config(once, "roundtrip.toml", {}));
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "to_toml output does not parse back: %s\n---\n%s---\n", e.what(), once.c_str());
    __builtin_trap();
  }
  if (twice != once) {
    std::fprintf(stderr, "round trip changed the config:\n--- once\n%s--- twice\n%s---\n", once.c_str(),
                 twice.c_str());
    __builtin_trap();
  }
  return 0;
}
