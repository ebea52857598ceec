// Preemption: the signals that ask a job to stop and come back later (Slurm's --signal, a scheduler's SIGUSR1),
// recorded by an async-signal-safe handler; the trainer has all ranks agree on them at each step boundary, so that
// every rank stops after the same step, rank 0 saves, and all exit with kExitPreempted (launch_contract.h).
#pragma once

#include <string>
#include <vector>

namespace ddprun::engine {

// "USR1,USR2", with or without "SIG", any case; "none" is empty. Throws std::invalid_argument naming what it cannot
// read; SIGKILL and SIGSTOP cannot be caught and are refused.
std::vector<int> parse_signal_list(const std::string& list);

// "SIGUSR1" for SIGUSR1.
std::string signal_name(int signal);

// From now on the first of `signals` to arrive is recorded (and, once recorded, a second one of the same kind takes
// its default action, so a second Ctrl-C still ends the process at once). A signal already watched stays as it is.
void watch_preemption_signals(const std::vector<int>& signals);

// The signal recorded since watch_preemption_signals, or 0.
int preemption_signal();

}  // namespace ddprun::engine
