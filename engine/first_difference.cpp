// first_different_lines: line by line until two differ.
#include "engine/first_difference.h"

#include <sstream>

namespace ddprun::engine {

std::pair<std::string, std::string> first_different_lines(const std::string& a, const std::string& b) {
  std::istringstream in_a(a), in_b(b);
  for (;;) {
    std::string line_a, line_b;
    const bool more_a = static_cast<bool>(std::getline(in_a, line_a));
    const bool more_b = static_cast<bool>(std::getline(in_b, line_b));
    if (!more_a && !more_b) return {};
    if (!more_a) line_a = "(nothing)";
    if (!more_b) line_b = "(nothing)";
    if (line_a != line_b) return {line_a, line_b};
  }
}

}  // namespace ddprun::engine
