// Runs the job and looks after it: starts the launcher (mpirun or srun) as a child in its own process group, passes
// the signals ddprun gets on to it (so they reach every rank), and when it ends decides what comes next: done,
// preempted (requeue the Slurm job), or failed (start it again with --resume auto, with a growing delay, up to
// --max-restarts times; failures before training started are final).
#pragma once

#include "launcher/environment.h"

#include <functional>
#include <string>
#include <vector>

namespace ddprun::launcher {

// Exit codes the ranks and ddprun agree on (ddptrain's too).
constexpr int kExitFailure = 1;      // a failure during training: worth a restart
constexpr int kExitUsage = 2;        // bad flags: final
constexpr int kExitSetUpFailed = 3;  // failed before training started (data, checkpoint, devices): final
constexpr int kExitPreempted = 75;   // preempted, checkpoint saved: requeue (EX_TEMPFAIL)

struct SupervisorOptions {
  std::string launcher = "mpirun";  // srun gets SIGTERM for SIGINT (its first SIGINT only prints status)
  int max_restarts = 0;
  double restart_delay = 1;  // seconds before the first restart, doubled each time, at most kMaxRestartDelay
  bool requeue = true;       // under Slurm, scontrol requeue after a preemption
};
constexpr double kMaxRestartDelay = 60;

// How the launcher ended: its exit code, or the signal that killed it.
struct JobEnd {
  bool killed = false;
  int value = 0;
};

// What to do after a job ended.
enum class Decision { Finished, Preempted, Stopped, Final, Restart, GiveUp };

// `signalled`: ddprun passed a signal on during this run (someone asked the job to stop).
Decision decide(const JobEnd& end, bool signalled, int restart, int max_restarts);

// The exit code ddprun reports for `end` (128 + N when killed by signal N).
int exit_code_of(const JobEnd& end);

// "exit code 137 (a rank was killed by SIGKILL)" and the like.
std::string describe(const JobEnd& end);

// "SIGUSR1" for SIGUSR1.
std::string signal_name(int signal);

// The job id scontrol requeue takes ("123", or "123_4" for an array task), or "" outside Slurm.
std::string slurm_job_to_requeue(const Environment& env);

// Seconds before restart number `restart` + 1.
double restart_delay(const SupervisorOptions& options, int restart);

// Runs command_for(0), then command_for(1), ... as decided; returns ddprun's exit code. Throws std::runtime_error
// when the launcher cannot be started at all.
int supervise(const SupervisorOptions& options, const std::function<std::vector<std::string>(int restart)>& command_for,
              const Environment& env);

}  // namespace ddprun::launcher
