// "Did you mean ...?" for names users type: run-file keys, sections, command values.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

// Levenshtein distance (insertions, deletions, substitutions; an adjacent swap counts as one edit).
size_t edit_distance(std::string_view a, std::string_view b);

// The candidate closest to `word` when it is close enough to be a typo: at most 1 edit for words of
// up to 4 letters, 2 up to 8, a quarter of the length beyond (ties: the first candidate).
std::optional<std::string> closest_match(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace kiln
