// The ranks' side of ddprun's ready channel (ddprun/launch_contract.h): once every rank catches its preemption
// signals, rank 0 says so, and ddprun stops holding SIGUSR1/SIGUSR2 back; a rank that aborts the job says so first.
// Without ddprun (DDPRUN_READY_SOCKET unset) or on another node than ddprun, nothing happens: ddprun then passes held
// signals on after its hold time.
#pragma once

namespace ddprun::comm {

// Sends the ready message to DDPRUN_READY_SOCKET if it is set; never blocks, never fails (the report is a hint).
void report_ranks_ready();
// Says that this rank is about to abort the job (kAbortingMessage), the same way: if the launcher cannot end the
// job (a node it cannot reach), ddprun does.
void report_job_aborting();
// Says that this rank exits with kExitPreempted after an agreed preemption (kPreemptedMessage), the same way.
void report_job_preempted();

}  // namespace ddprun::comm
