// Preemption: a scheduler's signal (Slurm's --signal=B:USR1@..., or ddprun passing one on) asks the job to stop and
// come back later. The guard records it and, at each step boundary, the ranks agree whether any of them got one, so
// that every rank stops after the same step; then save a checkpoint and exit with kExitPreempted: ddprun requeues
// the job under Slurm, and CheckpointManager::resume_auto continues where it stopped.
#pragma once

#include "ddprun/launch_contract.h"  // kExitPreempted and the other exit codes
#include "ddprun/process_group.h"

#include <csignal>
#include <vector>

namespace ddprun {

class PreemptionGuard {
 public:
  // From now on the first of `signals` is recorded (a second one of the same kind has its default effect: a second
  // Ctrl-C still ends the process). Make it on every rank right after init_process_group (it waits for all ranks,
  // then tells ddprun, which holds SIGUSR1/SIGUSR2 back until then: before, such a signal would end the rank).
  explicit PreemptionGuard(ProcessGroup& group, const std::vector<int>& signals = {SIGUSR1, SIGUSR2});

  // Every rank, at every step boundary (one small all-reduce): true on every rank when any rank got a signal.
  bool should_stop();
  // The signal the ranks agreed on (0 before).
  int signal() const { return signal_; }

 private:
  ProcessGroup& group_;
  int signal_ = 0;
};

}  // namespace ddprun
