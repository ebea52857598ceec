// Bytes from a file quoted in an error message (a record name, a pickle global): printable ASCII kept, the rest
// escaped as \xNN, at most 100 bytes, so that a hostile file cannot fill a message or a terminal.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace ddprun::checkpoint {

inline std::string quoted_text(std::string_view s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string r;
  for (size_t i = 0; i < s.size() && i < 100; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      r += static_cast<char>(c);
    } else {
      r += "\\x";
      r += kDigits[c >> 4];
      r += kDigits[c & 15];
    }
  }
  if (s.size() > 100) r += "...";
  return r;
}

}  // namespace ddprun::checkpoint
