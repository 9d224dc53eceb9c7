// Whole numbers read from text that people or other programs wrote (environment variables, file
// metadata): the whole text must be the number, so "8 threads" or "" is not read as 8 or 0.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>

namespace kiln {

// The number `text` spells in decimal (an optional leading '-'), or nullopt when it spells anything
// else or does not fit in 64 bits.
std::optional<int64_t> parse_whole_number(std::string_view text);

}  // namespace kiln
