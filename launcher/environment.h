// The launcher's view of its environment: a copy taken once at start-up, so that the planning code reads variables
// from a value (and tests can hand it any environment).
#pragma once

#include <map>
#include <string>

namespace ddprun::launcher {

using Environment = std::map<std::string, std::string>;

// Every variable of this process (environ).
Environment current_environment();

// The variable's value, or nullptr when unset.
const std::string* lookup(const Environment& env, const std::string& name);

}  // namespace ddprun::launcher
