// ddprun's command line: how many ranks where, which launcher, what the ranks get, how failures and preemption are
// handled, and the program to start.
#pragma once

#include "launcher/job_shape.h"

#include <stdexcept>
#include <string>
#include <vector>

namespace ddprun::launcher {

// A bad ddprun flag: one line, ddprun exits with 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LaunchOptions {
  ShapeRequest shape;                // --np, --gpus-per-node, -H, --hostfile
  std::string launcher = "mpirun";   // --launcher mpirun|srun
  std::string launcher_path;         // --mpirun PATH / --srun PATH (default: the launcher's name, from PATH)
  std::vector<std::string> exports;  // -x VAR or VAR=VALUE
  std::string rsh_agent;             // --rsh-agent: how mpirun reaches the other hosts (Open MPI's plm_rsh_agent)
  int max_restarts = 0;              // --max-restarts
  double restart_delay = 1;          // --restart-delay: seconds before the first restart, doubled each time
  bool requeue = true;               // under Slurm, requeue the job when the ranks exit preempted (--no-requeue)
  double signal_hold = 10;           // --signal-hold: seconds SIGUSR1/2 may wait for the ranks to start catching them
  bool dry_run = false;              // --dry-run
  bool help = false;                 // -h, --help
  std::vector<std::string> program;  // PROGRAM ARGS...
};

// Throws UsageError. `argv[0]` is ddprun itself.
LaunchOptions parse_launch_options(int argc, const char* const* argv);

extern const char* const kLaunchUsage;

}  // namespace ddprun::launcher
