// What a rank tells another that asks where it is: the status text, its parsing and the skipped-call rule.
#include "comm/peer_status.h"

#include <sstream>

namespace ddprun::comm {

std::string peer_status_text(const PeerStatus& status) {
  return std::to_string(status.calls_completed) + " " + std::to_string(status.started_seq) + " " +
         (status.running ? "1 " : "0 ") + status.what;
}

std::optional<PeerStatus> parse_peer_status(const std::string& text) {
  std::istringstream fields(text);
  PeerStatus status;
  int running = -1;
  if (!(fields >> status.calls_completed >> status.started_seq >> running) || (running != 0 && running != 1))
    return std::nullopt;
  status.running = running == 1;
  std::getline(fields >> std::ws, status.what);
  return status;
}

bool peer_skipped_call(const PeerStatus& theirs, uint64_t issued, uint64_t calls_completed) {
  return theirs.running && theirs.started_seq > issued && theirs.calls_completed <= calls_completed;
}

}  // namespace ddprun::comm
