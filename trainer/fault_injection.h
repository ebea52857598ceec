// Fault injection for the preemption and failure tests: DDPRUN_INJECT_SIGNAL="SIGNAL:RANK:EPOCH:WHERE" makes rank
// RANK send itself SIGNAL (USR1, USR2, TERM, ..., or KILL and STOP) once, in epoch EPOCH, WHERE being the number of
// that epoch's steps done (right after that step, before its step boundary) or "eval" (in that epoch's evaluation,
// after its first batch). The signal then takes the same path as one from a scheduler, at a point a test can name.
// Only a job's first run is hit: a run that ddprun restarted (DDPRUN_RESTART_COUNT > 0) does not meet the fault
// again. Unset or empty: nothing happens.
#pragma once

#include <cstdint>
#include <string>

namespace ddprun::trainer {

class FaultInjection {
 public:
  FaultInjection() = default;
  // The injection for this rank from DDPRUN_INJECT_SIGNAL's value; throws std::invalid_argument naming the variable
  // and what it cannot read.
  static FaultInjection parse(const std::string& value, int rank);
  // `restarts`: DDPRUN_RESTART_COUNT (a restarted job is not hit again).
  static FaultInjection from_environment(int rank, int restarts);

  // Call after each training step (`steps_done` of `epoch` so far) and in evaluation.
  void after_step(int epoch, int64_t steps_done);
  void during_evaluation(int epoch);

  bool armed() const { return signal_ != 0 && !fired_; }

 private:
  void fire();
  int signal_ = 0;
  int epoch_ = -1;
  int64_t steps_ = -1;  // -1: during evaluation
  bool fired_ = false;
};

}  // namespace ddprun::trainer
