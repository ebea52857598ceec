// Preemption and divergence at step boundaries. A scheduler's signal (Slurm's --signal=B:USR1@..., or ddprun passing
// one on) asks the job to stop and come back later; the guard records it and, at each step boundary, the ranks agree
// whether any of them got one, so that every rank stops after the same step: then save a checkpoint and return
// kExitPreempted (launch_contract.h), which ddprun requeues under Slurm. check_step() also agrees, before the
// optimizer's update, on whether any rank's loss is NaN or inf (the update would poison every rank's weights).
#pragma once

#include "ddprun/launch_contract.h"  // kExitPreempted and the other exit codes
#include "ddprun/process_group.h"

#include <csignal>
#include <cstdint>
#include <string>
#include <vector>

namespace ddprun {

// From now on the first of `signals` to arrive is recorded instead of ending the process (a second one of the same
// kind has its default effect: a second Ctrl-C still ends it). Call it first thing in main to catch them during
// set-up too; PreemptionGuard does it at the latest. SIGKILL and SIGSTOP cannot be caught: std::invalid_argument.
void catch_preemption_signals(const std::vector<int>& signals = {SIGUSR1, SIGUSR2});

// "USR1,USR2" (with or without "SIG", any case; "none": no signal) as signal numbers; std::invalid_argument naming
// what it cannot read (SIGKILL and SIGSTOP cannot be caught and are refused).
std::vector<int> parse_signal_list(const std::string& list);
// "SIGUSR1" for SIGUSR1.
std::string signal_name(int signal);

enum class NanPolicy {
  Stop,      // throw DivergedError on every rank before the update (exit code kExitDiverged)
  SkipStep,  // skip the update on every rank and go on; max_skipped_in_a_row in a row throw DivergedError
};

struct GuardOptions {
  std::vector<int> signals = {SIGUSR1, SIGUSR2};
  NanPolicy nan_policy = NanPolicy::Stop;
  int max_skipped_in_a_row = 10;
};

class PreemptionGuard {
 public:
  // On every rank, right after init_process_group: catches options.signals, waits for every rank to do so, then
  // tells ddprun (which holds SIGUSR1/SIGUSR2 back until then: before, such a signal would end a rank still starting).
  explicit PreemptionGuard(ProcessGroup& group, GuardOptions options = {});

  // Every rank, at every step boundary (one small all-reduce): true on every rank when any rank got a signal.
  bool should_stop();

  // Every rank, after backward and before the optimizer's step (one small all-reduce, instead of should_stop()):
  // agrees on a signal and on whether any rank's `loss` is NaN or inf. Returns whether to apply the update: false
  // when a loss was not finite and the policy is SkipStep (the gradients are then yours to zero). Throws
  // DivergedError on every rank, naming the rank, `epoch` and `step`, under NanPolicy::Stop. Afterwards
  // stop_requested() says whether to stop after this step.
  bool check_step(double loss, int64_t epoch, int64_t step);
  bool stop_requested() const { return signal_ != 0; }

  // The signal the ranks agreed on (0 before).
  int signal() const { return signal_; }

 private:
  ProcessGroup& group_;
  GuardOptions options_;
  int signal_ = 0;
  int skipped_in_a_row_ = 0;
};

}  // namespace ddprun
