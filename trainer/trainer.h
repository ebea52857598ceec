// The training run of one rank: set-up (device, threads, data, model, resume), then per epoch: train with gradients
// averaged over all ranks, step the schedule, evaluate on the sharded test split, report, and checkpoint on rank 0.
#pragma once

#include "comm/agreement.h"
#include "comm/communicator.h"
#include "ddprun/launch_contract.h"
#include "trainer/options.h"

#include <string>

namespace ddprun::trainer {

// How a run ended, the same on every rank.
enum class TrainOutcome {
  Finished,   // every epoch trained
  Stopped,    // --stop-after-steps reached; checkpoint written
  Preempted,  // a --preempt-signals signal reached some rank; checkpoint written
};

// A set-up failure, agreed on by every rank (thrown by train() before the first step).
class SetUpFailure : public comm::CollectiveFailure {
 public:
  using comm::CollectiveFailure::CollectiveFailure;
};

// A NaN or inf loss stopped training (--nan-policy), agreed by every rank before that step's update; exit code
// kExitDiverged (ddprun does not restart it: it would diverge again).
class DivergedFailure : public comm::CollectiveFailure {
 public:
  using comm::CollectiveFailure::CollectiveFailure;
};

// Returns when every epoch is done, or after the checkpoint of a stop or a preemption. Set-up and checkpoint
// failures are agreed on by all ranks and thrown on every rank, as SetUpFailure before the first step and as
// comm::CollectiveFailure (DivergedFailure for a NaN/inf loss) after it; any other exception is this rank's alone (the
// caller must end the job). `host_memory` is what keep_freed_host_memory() did, for the start-up line.
TrainOutcome train(const TrainOptions& options, comm::Communicator& comm, const std::string& host_memory);

}  // namespace ddprun::trainer
