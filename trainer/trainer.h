// The training run of one rank, on ddprun's public library as a user's program would use it: set-up (device,
// threads, data, model, resume), then per epoch: train with gradients averaged over all ranks, step the schedule,
// evaluate on the sharded test split, report, and checkpoint.
#pragma once

#include "ddprun/process_group.h"
#include "trainer/options.h"

#include <string>

namespace ddprun::trainer {

// Trains every epoch (or until --stop-after-steps or a preemption signal) and returns the exit code: 0, or
// kExitPreempted after a preemption's checkpoint. What fails throws a ddprun::Error, on every rank when the ranks
// agreed on it (run_main reports it). `host_memory` is what keep_freed_host_memory() did, for the start-up line.
int train(const TrainOptions& options, ProcessGroup& group, const std::string& host_memory);

}  // namespace ddprun::trainer
