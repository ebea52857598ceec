// Slurm's host list and tasks-per-node syntax, expanded.
#include "launcher/hostlist.h"

#include <cctype>
#include <stdexcept>

namespace ddprun::launcher {
namespace {

bool all_digits(const std::string& text) {
  if (text.empty()) return false;
  for (const char c : text)
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// Splits at the commas that are not inside brackets.
std::vector<std::string> split_top_level(const std::string& list, const std::string& whole) {
  std::vector<std::string> parts;
  std::string part;
  int depth = 0;
  for (const char c : list) {
    if (c == '[') ++depth;
    if (c == ']' && --depth < 0) throw std::invalid_argument("unbalanced ']' in host list '" + whole + "'");
    if (c == ',' && depth == 0) {
      parts.push_back(part);
      part.clear();
    } else {
      part += c;
    }
  }
  if (depth != 0) throw std::invalid_argument("unbalanced '[' in host list '" + whole + "'");
  parts.push_back(part);
  return parts;
}

// "a,b,,c" -> a b "" c (every comma splits, so empty items stay visible to the caller).
std::vector<std::string> split_at_commas(const std::string& text) {
  std::vector<std::string> items;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find(',', begin);
    if (end == std::string::npos) end = text.size();
    items.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return items;
}

// "01-03,07" -> 01 02 03 07, each as wide as the range's first number.
std::vector<std::string> expand_range(const std::string& ranges, const std::string& whole) {
  std::vector<std::string> values;
  for (const std::string& range : split_at_commas(ranges)) {
    const size_t dash = range.find('-');
    const std::string first = range.substr(0, dash);
    const std::string last = dash == std::string::npos ? first : range.substr(dash + 1);
    if (!all_digits(first) || !all_digits(last) || first.size() > 9 || last.size() > 9)
      throw std::invalid_argument("cannot read the range '" + range + "' in host list '" + whole + "'");
    const long from = std::stol(first), to = std::stol(last);
    if (to < from || to - from > 100000)
      throw std::invalid_argument("the range '" + range + "' in host list '" + whole +
                                  "' runs backwards or is too long");
    for (long n = from; n <= to; ++n) {
      std::string text = std::to_string(n);
      if (text.size() < first.size()) text.insert(0, first.size() - text.size(), '0');
      values.push_back(text);
    }
  }
  return values;
}

void expand_name(const std::string& name, const std::string& whole, std::vector<std::string>& out) {
  const size_t open = name.find('[');
  if (open == std::string::npos) {
    if (name.empty()) throw std::invalid_argument("empty host name in host list '" + whole + "'");
    out.push_back(name);
    return;
  }
  const size_t close = name.find(']', open);
  if (close == std::string::npos) throw std::invalid_argument("unbalanced '[' in host list '" + whole + "'");
  const std::string prefix = name.substr(0, open), rest = name.substr(close + 1);
  for (const std::string& value : expand_range(name.substr(open + 1, close - open - 1), whole))
    expand_name(prefix + value + rest, whole, out);
}

}  // namespace

std::vector<std::string> expand_hostlist(const std::string& list) {
  std::vector<std::string> hosts;
  for (const std::string& part : split_top_level(list, list)) expand_name(part, list, hosts);
  return hosts;
}

std::vector<int> expand_tasks_per_node(const std::string& counts) {
  std::vector<int> tasks;
  for (const std::string& item : split_at_commas(counts)) {
    const size_t paren = item.find('(');
    const std::string count = item.substr(0, paren);
    std::string repeat = "1";
    if (paren != std::string::npos) {
      if (item.size() < paren + 4 || item.compare(paren, 2, "(x") != 0 || item.back() != ')')
        throw std::invalid_argument("cannot read '" + item + "' in the task counts '" + counts + "'");
      repeat = item.substr(paren + 2, item.size() - paren - 3);
    }
    if (!all_digits(count) || !all_digits(repeat) || count.size() > 6 || repeat.size() > 6)
      throw std::invalid_argument("cannot read '" + item + "' in the task counts '" + counts + "'");
    for (int n = std::stoi(repeat); n > 0; --n) tasks.push_back(std::stoi(count));
  }
  return tasks;
}

}  // namespace ddprun::launcher
