// The contract between ddprun (the launcher), the ranks it starts (ddptrain, or a program built on libddprun) and
// the people and schedulers around them: the exit codes and the environment variables they share. The one place
// these are written down; the launcher includes nothing else of the library.
#pragma once

namespace ddprun {

// Exit codes. ddprun restarts a job (--max-restarts) only after kExitFailure or a rank killed by a signal; the
// others are final, and kExitPreempted asks for a requeue.
constexpr int kExitSuccess = 0;
constexpr int kExitFailure = 1;      // failed during training (a collective, a checkpoint write): worth a restart
constexpr int kExitUsage = 2;        // bad flags or options: final
constexpr int kExitSetUpFailed = 3;  // failed before training started (data, checkpoint, devices, output folder)
constexpr int kExitDiverged = 4;     // a NaN/inf loss stopped training: a restart would repeat it, so final
constexpr int kExitPreempted = 75;   // preempted, checkpoint saved: requeue and resume (EX_TEMPFAIL)

// Environment variables ddprun sets for the ranks (passed through mpirun -x DDPRUN_* or srun --export=ALL).
constexpr const char* kEnvRestartCount = "DDPRUN_RESTART_COUNT";  // restarts by ddprun so far (0: first run)
constexpr const char* kEnvProgress = "DDPRUN_PROGRESS";           // "1": ddprun's output is a terminal
// An abstract Unix socket ("@name") where rank 0 reports that every rank catches its preemption signals; ddprun
// holds SIGUSR1/SIGUSR2 until then, since a rank that is still starting would be killed by them.
constexpr const char* kEnvReadySocket = "DDPRUN_READY_SOCKET";
// The message rank 0 sends there.
constexpr const char* kReadyMessage = "ready";
// What a rank on ddprun's node sends there just before it aborts the job (MPI_Abort): if the launcher has not ended
// the job a few seconds later (mpirun waits for a node it can no longer reach), ddprun ends it.
constexpr const char* kAbortingMessage = "aborting";
// ... and one a rank sends as it exits with kExitPreempted after the ranks agreed on a preemption and saved (run_main
// sends it): the job was preempted even if the launcher then ends slower ranks itself (srun --kill-on-bad-exit
// terminating the other node's ranks as the first exits with 75).
constexpr const char* kPreemptedMessage = "preempted";
// The longest collective timeout, in seconds (a week): for DDPRUN_COMM_TIMEOUT, ProcessGroupOptions::timeout_seconds
// and ddptrain's --comm-timeout alike.
constexpr double kMaxCommTimeoutSeconds = 7 * 24 * 3600;

}  // namespace ddprun
