// The status a rank tells another that asks where it is, and the rule by which a rendezvous decides that a peer
// skipped the library call (which ends the job with "will never make this call") rather than already left it.
#include "comm/peer_status.h"

#include <gtest/gtest.h>

#include <optional>

using ddprun::comm::parse_peer_status;
using ddprun::comm::peer_skipped_call;
using ddprun::comm::peer_status_text;
using ddprun::comm::PeerStatus;

TEST(PeerStatus, TextRoundTripsWithTheCollectiveDescribedInWords) {
  PeerStatus status;
  status.calls_completed = 7;
  status.started_seq = 50;
  status.running = true;
  status.what = "allgather of bytes #50 (240 bytes from this rank)";
  const std::optional<PeerStatus> parsed = parse_peer_status(peer_status_text(status));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->calls_completed, 7u);
  EXPECT_EQ(parsed->started_seq, 50u);
  EXPECT_TRUE(parsed->running);
  EXPECT_EQ(parsed->what, status.what);

  const std::optional<PeerStatus> fresh = parse_peer_status(peer_status_text(PeerStatus{}));
  ASSERT_TRUE(fresh);
  EXPECT_EQ(fresh->started_seq, 0u);
  EXPECT_FALSE(fresh->running);
  EXPECT_EQ(fresh->what, "");
}

TEST(PeerStatus, TextThatIsNoStatusIsRefused) {
  EXPECT_FALSE(parse_peer_status(""));
  EXPECT_FALSE(parse_peer_status("50 1 allreduce"));  // the format before the rendezvous count: a peer of another build
  EXPECT_FALSE(parse_peer_status("3 50 2 allreduce"));
  EXPECT_FALSE(parse_peer_status("x 50 1 allreduce"));
}

// CI's 2-node Slurm job: ranks 0 and 1 were still in the rendezvous of CheckpointManager::save() (49 collectives
// issued, 4 rendezvous left) when rank 2 had left it and was in collective #50. That is no skip.
TEST(PeerStatus, APeerThatLeftTheRendezvousAndStartedTheNextCollectiveDidNotSkipIt) {
  PeerStatus ahead;
  ahead.calls_completed = 5;
  ahead.started_seq = 50;
  ahead.running = true;
  EXPECT_FALSE(peer_skipped_call(ahead, /*issued=*/49, /*calls_completed=*/4));
}

TEST(PeerStatus, APeerWaitingInACollectiveNotIssuedHereWithoutLeavingTheRendezvousSkippedIt) {
  PeerStatus skipper;
  skipper.calls_completed = 4;
  skipper.started_seq = 50;
  skipper.running = true;
  EXPECT_TRUE(peer_skipped_call(skipper, 49, 4));
  skipper.calls_completed = 3;  // a stale answer from before the previous rendezvous says the same
  EXPECT_TRUE(peer_skipped_call(skipper, 49, 4));
}

TEST(PeerStatus, APeerBehindOrIdleIsOnItsWayToTheCall) {
  PeerStatus behind;
  behind.calls_completed = 4;
  behind.started_seq = 49;
  behind.running = true;  // still in the last collective this rank issued too
  EXPECT_FALSE(peer_skipped_call(behind, 49, 4));
  behind.started_seq = 50;
  behind.running = false;  // not waiting in anything
  EXPECT_FALSE(peer_skipped_call(behind, 49, 4));
}
