// The process environment copied into an Environment.
#include "launcher/environment.h"

#include <unistd.h>

namespace ddprun::launcher {

Environment current_environment() {
  Environment env;
  for (char** entry = environ; *entry; ++entry) {
    const std::string text = *entry;
    const size_t equals = text.find('=');
    if (equals != std::string::npos) env[text.substr(0, equals)] = text.substr(equals + 1);
  }
  return env;
}

const std::string* lookup(const Environment& env, const std::string& name) {
  const auto found = env.find(name);
  return found == env.end() ? nullptr : &found->second;
}

}  // namespace ddprun::launcher
