// What a rank tells another that asks where it is (the watchdog's and rendezvous()'s status queries): the text on
// the wire, its parsing, and the rule that says a peer skipped a library call rather than already left it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ddprun::comm {

struct PeerStatus {
  uint64_t calls_completed = 0;  // rendezvous() this rank has left
  uint64_t started_seq = 0;      // its latest collective started (0: none yet)
  bool running = false;          // that collective has not completed
  std::string what;              // that collective, described
};

// "<calls completed> <started seq> <1 if running> <what>".
std::string peer_status_text(const PeerStatus& status);
// The text's status, or nothing if it is not one (a peer of another build: the reply is ignored).
std::optional<PeerStatus> parse_peer_status(const std::string& text);

// During a rendezvous that this rank entered after issuing `issued` collectives and leaving `calls_completed`
// rendezvous: true if the peer's status shows it waiting in a collective this rank has not issued without having
// left this rendezvous. Such a peer skipped the call, and neither rank would ever return. A peer that has left it
// (its count is ahead) may already be in the next collective while this rank's side of the rendezvous finishes.
bool peer_skipped_call(const PeerStatus& theirs, uint64_t issued, uint64_t calls_completed);

}  // namespace ddprun::comm
