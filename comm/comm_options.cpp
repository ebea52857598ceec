// CommOptions from DDPRUN_COMM_* environment variables.
#include "comm/comm_options.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace ddprun::comm {

namespace {
// A number from 0 to `largest` from the environment, or `fallback` when unset; anything else is an error.
double env_number(const char* name, double fallback, double largest) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (*end != '\0' || !std::isfinite(value) || value < 0 || value > largest) {
    char range[64];
    std::snprintf(range, sizeof range, "%.15g", largest);
    throw std::invalid_argument(std::string(name) + "=" + text + " is not a number from 0 to " + range);
  }
  return value;
}

constexpr bool kDebugBuild =
#ifdef NDEBUG
    false;
#else
    true;
#endif
}  // namespace

CommOptions comm_options_from_env() {
  CommOptions options;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(
      env_number("DDPRUN_COMM_TIMEOUT", options.timeout.count() / 1000.0, kMaxCommTimeoutSeconds) * 1000));
  options.check_shapes = env_number("DDPRUN_COMM_CHECK", kDebugBuild ? 1 : 0, 1) != 0;
  options.segment_bytes = static_cast<int64_t>(
      env_number("DDPRUN_COMM_SEGMENT_BYTES", static_cast<double>(options.segment_bytes), double(int64_t{1} << 40)));
  options.tree_from_bytes = static_cast<int64_t>(env_number(
      "DDPRUN_COMM_TREE_FROM_BYTES", static_cast<double>(options.tree_from_bytes), double(int64_t{1} << 40)));
  options.tree_segment_bytes = static_cast<int64_t>(env_number(
      "DDPRUN_COMM_TREE_SEGMENT_BYTES", static_cast<double>(options.tree_segment_bytes), double(int64_t{1} << 40)));
  const double nice = env_number("DDPRUN_COMM_NICE", options.progress_nice, 19);
  if (nice != std::floor(nice))
    throw std::invalid_argument(std::string("DDPRUN_COMM_NICE=") + std::getenv("DDPRUN_COMM_NICE") +
                                " is not a whole number from 0 to 19");
  options.progress_nice = static_cast<int>(nice);
  const double sleep = env_number("DDPRUN_COMM_WAIT_SLEEP", options.sleep_while_waiting ? 1 : 0, 1);
  if (sleep != 0 && sleep != 1)
    throw std::invalid_argument(std::string("DDPRUN_COMM_WAIT_SLEEP=") + std::getenv("DDPRUN_COMM_WAIT_SLEEP") +
                                " is not 0 or 1");
  options.sleep_while_waiting = sleep == 1;
  return options;
}

std::chrono::milliseconds watchdog_period(std::chrono::milliseconds timeout) {
  if (timeout.count() <= 0) return std::chrono::milliseconds(200);
  return std::clamp<std::chrono::milliseconds>(timeout / 20, std::chrono::milliseconds(10),
                                               std::chrono::milliseconds(200));
}

}  // namespace ddprun::comm
