// The training run of one rank: set-up (device, threads, data, model, resume), then per epoch: train with gradients
// averaged over all ranks, step the schedule, evaluate on the sharded test split, report, and checkpoint on rank 0.
#pragma once

#include "comm/communicator.h"
#include "trainer/options.h"

#include <string>

namespace ddprun::trainer {

// Returns when every epoch is done. Set-up and checkpoint failures are agreed on by all ranks and thrown as
// comm::CollectiveFailure on every rank; any other exception is this rank's alone (the caller must end the job).
// `host_memory` is what keep_freed_host_memory() did, for the start-up line.
void train(const TrainOptions& options, comm::Communicator& comm, const std::string& host_memory);

}  // namespace ddprun::trainer
