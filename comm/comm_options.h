// What a communicator is told when it starts: the timeout, the shape check, the segment size; and the environment
// variables that set them. No LibTorch or MPI types here, so option parsers can include it cheaply.
#pragma once

#include "ddprun/launch_contract.h"  // kMaxCommTimeoutSeconds

#include <chrono>
#include <cstdint>

namespace ddprun::comm {

struct CommOptions {
  // A collective still running after this long ends the job: the rank prints the operation, the tensor sizes and
  // the ranks it is waiting on, then aborts every rank. Zero waits forever.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  // Before each collective, all ranks compare what they pass (kind, sizes, dtypes, root) and fail with a message
  // naming each rank's tensors instead of exchanging mismatched buffers. Costs one small all-gather per collective.
  bool check_shapes = false;
  // Large buffers are reduced in pieces of this many bytes (they stay in cache; see scripts/bench/allreduce.sh).
  int64_t segment_bytes = int64_t{4} << 20;
  // Buffers of at least this many bytes (0: none) are all-reduced with Open MPI's Rabenseifner algorithm, which sums
  // in a balanced tree over the ranks whatever the nodes (so 2 nodes x 2 ranks give the bits of 1 node x 4) and
  // crosses between nodes with half the bytes of the flat ring on 2 ranks per node; in pieces of
  // tree_segment_bytes. Measured by scripts/bench/allreduce.sh --hosts (docs/performance.md, "Across nodes").
  int64_t tree_from_bytes = int64_t{64} << 10;
  int64_t tree_segment_bytes = int64_t{1} << 20;
  // The nice value (0 to 19) of the thread that runs the collectives (never below the process's own). Open MPI's
  // progress loop polls while it waits; where a rank's cores are all busy with forward and backward (CPU training,
  // as many compute threads as cores) that polling takes their time, and at 19 it runs only when a core is free or
  // the compute threads wait for it. That also gives up overlapping communication with backward, so it stays 0 by
  // default: scripts/bench/comm_env_ab.sh measured little either way on 2 cores (docs/performance.md).
  int progress_nice = 0;
  // How the communication thread waits for ranks that have not reached a collective yet: false (the default) in
  // Open MPI's blocking call, which polls and holds a core until the last rank arrives; true behind an MPI_Ibarrier
  // polled between short sleeps, which leaves the cores to forward and backward (CPU training with every core busy:
  // the early rank's polling burnt a quarter of a core on 2 cores) at the price of one barrier per collective (~10%
  // of a 1 MiB all-reduce here). Every rank must choose the same; the communicator refuses to start otherwise.
  bool sleep_while_waiting = false;
};

// CommOptions from the environment: DDPRUN_COMM_TIMEOUT (seconds), DDPRUN_COMM_CHECK (0/1; on by default in
// builds without NDEBUG), DDPRUN_COMM_SEGMENT_BYTES, DDPRUN_COMM_TREE_FROM_BYTES (0 turns the tree off),
// DDPRUN_COMM_TREE_SEGMENT_BYTES, DDPRUN_COMM_NICE (0 to 19), DDPRUN_COMM_WAIT_SLEEP (0/1); throws
// std::invalid_argument naming a variable that is not a number in its range. Explicit flags override these in ddptrain.
CommOptions comm_options_from_env();

// How often a backend's watchdog looks at what is in flight: a twentieth of the timeout, between 10 and 200 ms.
std::chrono::milliseconds watchdog_period(std::chrono::milliseconds timeout);

}  // namespace ddprun::comm
