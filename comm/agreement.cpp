// run_on_all_ranks: exceptions turned into one message every rank agrees on.
#include "comm/agreement.h"

namespace ddprun::comm {

void run_on_all_ranks(Communicator& comm, const std::function<void()>& step) {
  std::string error;
  try {
    step();
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "unknown error";
  }
  const std::vector<std::string> errors = comm.allgather_bytes(error);
  for (int r = 0; r < static_cast<int>(errors.size()); ++r) {
    if (!errors[r].empty()) throw CollectiveFailure(r, errors[r]);
  }
}

}  // namespace ddprun::comm
