// Captions of training pictures: the sidecar text files kohya-style datasets keep next to each
// image, and the per-step shaping (activation phrase, tag order, shuffling, dropout) trainers
// apply to comma-separated tag captions.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kiln {

// The caption of `image`: the first of <stem><extension> beside it that exists, else the file's
// stem with '_' read as ' ' ("red_car.png" -> "red car"). A sidecar must be UTF-8 (a BOM is
// dropped); its lines are trimmed and blank ones dropped, the rest joined with ", ".
// Throws kiln::Error naming the caption file when it cannot be read or is not UTF-8
// ("not UTF-8 at byte N", N counted from 0 in the file).
std::string read_caption(const std::filesystem::path& image,
                         const std::vector<std::string>& extensions = {".txt", ".caption"});

struct CaptionOptions {
  std::string activation_phrase;  // the trigger word(s); always the first tag when set
  bool shuffle_tags = false;
  int keep_tags = 0;  // this many tags after the activation phrase and tags_to_start stay in place
  std::vector<std::string> tags_to_end, tags_to_start;  // moved there, in listed order, never shuffled
  double dropout = 0.0;  // probability of training on the empty caption instead
};

// Splits `caption` on commas into trimmed tags (empty ones dropped) and rebuilds it joined by
// ", ": [activation phrase] [tags_to_start...] [first keep_tags of the rest] [rest, shuffled]
// [tags_to_end...]. The activation phrase appears once, first, whether or not the caption had it.
// Randomness comes from one std::mt19937_64(seed): its first number decides dropout (drawn even
// when dropout is 0, so shuffles do not depend on it: dropped when (gen() >> 11) * 2^-53 <
// dropout), the rest drive a Fisher-Yates shuffle with index gen() % (i + 1), identical on every
// platform.
std::string process_caption(const std::string& caption, const CaptionOptions& options, std::uint64_t seed);

}  // namespace kiln
