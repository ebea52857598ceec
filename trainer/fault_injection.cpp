// DDPRUN_INJECT_SIGNAL, read and fired.
#include "trainer/fault_injection.h"

#include "ddprun/preemption_guard.h"

#include <csignal>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace ddprun::trainer {
namespace {

int64_t whole(const std::string& text, const std::string& value, const char* what) {
  size_t used = 0;
  long long n = -1;
  try {
    n = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || n < 0)
    throw std::invalid_argument("DDPRUN_INJECT_SIGNAL '" + value + "': " + what + " '" + text +
                                "' is not a whole number; write SIGNAL:RANK:EPOCH:STEPS or SIGNAL:RANK:EPOCH:eval");
  return n;
}

}  // namespace

FaultInjection FaultInjection::parse(const std::string& value, int rank) {
  FaultInjection injection;
  if (value.empty()) return injection;
  std::vector<std::string> parts;
  std::istringstream in(value);
  for (std::string part; std::getline(in, part, ':');) parts.push_back(part);
  if (parts.size() != 4)
    throw std::invalid_argument("DDPRUN_INJECT_SIGNAL '" + value +
                                "' is not SIGNAL:RANK:EPOCH:STEPS or SIGNAL:RANK:EPOCH:eval");
  std::string name = parts[0];
  if (name.rfind("SIG", 0) == 0) name.erase(0, 3);
  int signal = 0;
  if (name == "KILL") {
    signal = SIGKILL;
  } else if (name == "STOP") {
    signal = SIGSTOP;
  } else {
    try {
      const std::vector<int> list = parse_signal_list(name);
      if (list.size() == 1) signal = list.front();
    } catch (const std::invalid_argument&) {
    }
  }
  if (signal == 0)
    throw std::invalid_argument("DDPRUN_INJECT_SIGNAL '" + value + "': unknown signal '" + parts[0] + "'");
  const int64_t target_rank = whole(parts[1], value, "the rank");
  const int64_t epoch = whole(parts[2], value, "the epoch");
  const int64_t steps = parts[3] == "eval" ? -1 : whole(parts[3], value, "the steps");
  if (steps == 0)
    throw std::invalid_argument("DDPRUN_INJECT_SIGNAL '" + value + "': STEPS counts the epoch's steps done, from 1");
  if (target_rank != rank) return injection;
  injection.signal_ = signal;
  injection.epoch_ = static_cast<int>(epoch);
  injection.steps_ = steps;
  return injection;
}

FaultInjection FaultInjection::from_environment(int rank, int restarts) {
  const char* value = std::getenv("DDPRUN_INJECT_SIGNAL");
  FaultInjection injection = parse(value ? value : "", rank);  // checked in every run, armed in the first only
  if (restarts > 0) injection.signal_ = 0;
  return injection;
}

void FaultInjection::after_step(int epoch, int64_t steps_done) {
  if (armed() && steps_ >= 0 && epoch == epoch_ && steps_done == steps_) fire();
}

void FaultInjection::during_evaluation(int epoch) {
  if (armed() && steps_ < 0 && epoch == epoch_) fire();
}

void FaultInjection::fire() {
  fired_ = true;
  std::raise(signal_);
}

}  // namespace ddprun::trainer
