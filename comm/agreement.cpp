// run_on_all_ranks: exceptions turned into one message every rank agrees on.
#include "comm/agreement.h"

#include <c10/util/Exception.h>

namespace ddprun::comm {

std::string error_message(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string message = c10_error ? c10_error->what_without_backtrace() : e.what();
  if (const size_t end = message.find('\n'); end != std::string::npos) message.resize(end);
  return message.empty() ? "unknown error" : message;
}

void run_on_all_ranks(Communicator& comm, const std::function<void()>& step) {
  // "" when the step worked, else "<exit code> <message>".
  std::string error;
  try {
    step();
  } catch (const Error& e) {
    error = std::to_string(e.exit_code()) + " " + error_message(e);
  } catch (const std::exception& e) {
    error = std::to_string(kExitFailure) + " " + error_message(e);
  } catch (...) {  // whatever it was, the other ranks must not be left waiting for this rank's answer
    error = std::to_string(kExitFailure) + " unknown error (not a std::exception)";
  }
  const std::vector<std::string> errors = comm.allgather_bytes(error);
  for (int r = 0; r < static_cast<int>(errors.size()); ++r) {
    if (errors[r].empty()) continue;
    const size_t space = errors[r].find(' ');
    throw CollectiveFailure(r, errors[r].substr(space + 1), std::stoi(errors[r].substr(0, space)));
  }
}

}  // namespace ddprun::comm
