// The training run of one rank: set-up (device, threads, data, model, resume), then per epoch: train with gradients
// averaged over all ranks, step the schedule, evaluate on the sharded test split, report, and checkpoint on rank 0.
#pragma once

#include "comm/communicator.h"
#include "trainer/options.h"

namespace ddprun::trainer {

// Returns when every epoch is done. Set-up and checkpoint failures are agreed on by all ranks and thrown as
// comm::CollectiveFailure on every rank; any other exception is this rank's alone (the caller must end the job).
void train(const TrainOptions& options, comm::Communicator& comm);

}  // namespace ddprun::trainer
