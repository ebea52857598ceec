// Runs the job and looks after it: starts the launcher (mpirun or srun) as a child in its own process group, passes
// the signals ddprun gets on to it (so they reach every rank; SIGUSR1/SIGUSR2 only once the ranks report that they
// catch them), ends every process of the job that outlives the launcher, and when it ends decides what comes next:
// done, preempted (requeue the Slurm job), or failed (start it again with --resume auto, with a growing delay, up to
// --max-restarts times; failures before training started and diverged runs are final).
#pragma once

#include "ddprun/launch_contract.h"
#include "launcher/environment.h"

#include <functional>
#include <string>
#include <vector>

namespace ddprun::launcher {

struct SupervisorOptions {
  std::string launcher = "mpirun";  // srun gets SIGTERM for SIGINT (its first SIGINT only prints status)
  int max_restarts = 0;
  double restart_delay = 1;  // seconds before the first restart, doubled each time, at most kMaxRestartDelay
  bool requeue = true;       // under Slurm, scontrol requeue after a preemption
  double signal_hold = 10;   // seconds of a run's start during which SIGUSR1/SIGUSR2 wait for the ranks' ready report
};
constexpr double kMaxRestartDelay = 60;
// Ranks still there after the launcher ended get SIGTERM, then SIGKILL this much later (mpirun's own delay).
constexpr double kLeftoverGraceSeconds = 1;
// A rank that reported it is aborting the job: if the launcher has not ended the job this much later (mpirun waits
// for a node it cannot reach), ddprun ends the launcher (SIGKILL), and then the leftovers.
constexpr double kAbortGraceSeconds = 10;

// How the launcher ended: its exit code, or the signal that killed it.
struct JobEnd {
  bool killed = false;
  int value = 0;
};

// What to do after a job ended.
enum class Decision { Finished, Preempted, Stopped, Final, Restart, GiveUp };

// `signalled`: ddprun passed a signal on during this run (someone asked the job to stop).
// `ranks_preempted`: a rank reported that it exits with kExitPreempted (the launcher's own code may then be another,
// say 143 when srun ended the slower ranks).
Decision decide(const JobEnd& end, bool signalled, int restart, int max_restarts, bool ranks_preempted = false);

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
