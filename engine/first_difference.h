// Where two ranks' descriptions of the same thing (flags, parameters: one item per line) first differ, for the
// one-line messages that stop a job whose ranks do not match.
#pragma once

#include <string>
#include <utility>

namespace ddprun::engine {

// The first line at which the texts differ, as {line of a, line of b}; a text that ends first gives "(nothing)".
// Two empty strings when the texts are equal.
std::pair<std::string, std::string> first_different_lines(const std::string& a, const std::string& b);

}  // namespace ddprun::engine
