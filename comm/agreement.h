// Fallible steps that all ranks take together: each rank runs its part, then all ranks learn whether any failed and
// why, so every rank stops at the same point with the same message and none is left waiting in a collective.
#pragma once

#include "comm/communicator.h"

#include <functional>
#include <stdexcept>
#include <string>

namespace ddprun::comm {

// Thrown on every rank when the step failed on at least one; names the lowest failing rank and its message, and
// carries the exit code of what it threw (a ddprun::Error's, else kExitFailure).
class CollectiveFailure : public CommError {
 public:
  CollectiveFailure(int failed_rank, const std::string& message, int exit_code = kExitFailure)
      : CommError(message, failed_rank, exit_code) {}
};

// The message of an exception as one line: LibTorch's c10::Error carries a C++ backtrace after its message, which
// users should not see.
std::string error_message(const std::exception& e);

// Runs `step` on this rank, catching std::exception, then exchanges the outcome with every rank (one allgather):
// throws CollectiveFailure on every rank when it failed on any.
void run_on_all_ranks(Communicator& comm, const std::function<void()>& step);

}  // namespace ddprun::comm
