// The preemption signals' handler (it only stores the signal number) and their names.
#include "engine/preemption.h"

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstring>
#include <stdexcept>

namespace ddprun::engine {
namespace {

volatile std::sig_atomic_t received = 0;

void on_signal(int signal) {
  if (received == 0) received = signal;
}

struct Named {
  const char* name;
  int number;
};
constexpr Named kSignals[] = {{"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"USR1", SIGUSR1},
                              {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"CONT", SIGCONT}, {"XCPU", SIGXCPU}};

}  // namespace

std::vector<int> parse_signal_list(const std::string& list) {
  std::string upper = list;
  std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char c) { return std::toupper(c); });
  std::vector<int> signals;
  if (upper == "NONE") return signals;
  size_t begin = 0;
  while (begin <= upper.size()) {
    size_t end = upper.find(',', begin);
    if (end == std::string::npos) end = upper.size();
    std::string name = upper.substr(begin, end - begin);
    if (name.rfind("SIG", 0) == 0) name.erase(0, 3);
    const auto* found =
        std::find_if(std::begin(kSignals), std::end(kSignals), [&](const Named& s) { return name == s.name; });
    if (name == "KILL" || name == "STOP")
      throw std::invalid_argument("SIG" + name + " cannot be caught; use USR1 or USR2");
    if (found == std::end(kSignals))
      throw std::invalid_argument(
          "'" + list.substr(begin, end - begin) +
          "' is not a signal ddptrain can watch (USR1, USR2, TERM, INT, HUP, QUIT, CONT, XCPU)");
    signals.push_back(found->number);
    begin = end + 1;
  }
  return signals;
}

std::string signal_name(int signal) {
  for (const Named& s : kSignals)
    if (s.number == signal) return std::string("SIG") + s.name;
  return "signal " + std::to_string(signal);
}

void watch_preemption_signals(const std::vector<int>& signals) {
  static std::vector<int> watched;  // once per signal: a later call must not re-arm a handler that already fired
  struct sigaction action {};
  action.sa_handler = on_signal;
  action.sa_flags = SA_RESTART | SA_RESETHAND;  // restart interrupted calls; the next one of a kind is not caught
  sigemptyset(&action.sa_mask);
  for (const int signal : signals) {
    if (std::find(watched.begin(), watched.end(), signal) != watched.end()) continue;
    sigaction(signal, &action, nullptr);
    watched.push_back(signal);
  }
}

int preemption_signal() { return received; }

}  // namespace ddprun::engine
