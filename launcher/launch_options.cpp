// Parsing ddprun's flags (everything up to "--"; what follows is the program and its arguments).
#include "launcher/launch_options.h"

#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace ddprun::launcher {

const char* const kLaunchUsage =
    "usage: ddprun [options] -- PROGRAM [ARGS...]\n"
    "Starts PROGRAM (usually ddptrain) once per rank with mpirun (or srun), forwards signals to every rank,\n"
    "restarts the job after a failure and requeues it under Slurm after a preemption.\n"
    "Ranks and hosts:\n"
    "  --np N, -np N, -n N   number of ranks (default: the slots of -H/--hostfile, else GPUs per node x nodes,\n"
    "                        else the Slurm allocation, else 1)\n"
    "  --gpus-per-node G     GPUs (ranks) per node (default: CUDA_VISIBLE_DEVICES, else outside Slurm /dev/nvidiaN)\n"
    "  -H, --host HOST[:SLOTS],...   hosts to run on (default: --hostfile, else the Slurm allocation, else this node)\n"
    "  --hostfile FILE       an Open MPI hostfile ('HOST slots=N' per line)\n"
    "Launching:\n"
    "  --launcher mpirun|srun  start the ranks with Open MPI's mpirun (default) or Slurm's srun --mpi=pmix\n"
    "  --mpirun PATH, --srun PATH  the launcher program to use (default: from PATH)\n"
    "  -x VAR[=VALUE]        pass VAR (or set it to VALUE) on every rank (repeatable; PATH, LD_LIBRARY_PATH,\n"
    "                        the thread settings OMP_*/MKL_NUM_THREADS/OPENBLAS_NUM_THREADS, NCCL_* and DDPRUN_* "
    "always)\n"
    "  --rsh-agent COMMAND   how mpirun starts its daemons on the other hosts instead of ssh (Open MPI's\n"
    "                        plm_rsh_agent: called as COMMAND HOST CMD..., like ssh)\n"
    "  --dry-run             print the launch command and exit\n"
    "Failures and preemption:\n"
    "  --max-restarts K      after a failure (a rank crashed or was killed), start the job again with --resume auto,\n"
    "                        up to K times (default 0); failures before training started (exit codes 2, 3) are final\n"
    "  --restart-delay S     seconds before the first restart, doubled for each next one, at most 60 (default 1)\n"
    "  --no-requeue          under Slurm, do not run 'scontrol requeue' when the ranks exit preempted (75)\n"
    "  --signal-hold S       while the ranks start, hold SIGUSR1/SIGUSR2 back until they report that they catch\n"
    "                        them (ddptrain and libddprun programs do), at most S seconds after each start\n"
    "                        (default 10; 0: pass them on at once, which kills ranks still loading)\n"
    "  -h, --help            print this help\n"
    "Signals: SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 to ddprun reach every rank (mpirun ends the job on TERM,\n"
    "INT and HUP: SIGTERM after 1 s, SIGKILL at most 1 s later, so preempt with SIGUSR1 or SIGUSR2, which ddptrain's\n"
    "--preempt-signals catches). ddprun returns only when every process of the job is gone: ranks that outlive\n"
    "mpirun (it exits at once on a second SIGINT) get SIGTERM, then SIGKILL 1 s later.\n"
    "Exit codes: 0 success; 75 preempted, checkpoint saved, requeue (done by ddprun under Slurm); 2 a bad ddprun flag\n"
    "or no launcher; otherwise the job's code (1 failure, 2 bad program flags, 3 failed before training, 4 training\n"
    "diverged (NaN/inf loss), 128+N killed by signal N). Only 1 and 128+N are restarted.\n";

namespace {

int whole_number(const std::string& flag, const std::string& text, int smallest) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < smallest || value > INT_MAX)
    throw UsageError(flag + " '" + text + "' is not a " + (smallest > 0 ? "positive" : "non-negative") +
                     " whole number");
  return static_cast<int>(value);
}

// The agent's program (its first word) must be one mpirun can run: a path names an executable file, made absolute
// (mpirun may run it from elsewhere). Returns the agent with that path.
std::string checked_rsh_agent(const std::string& agent) {
  const size_t space = agent.find(' ');
  const std::string program = agent.substr(0, space);
  if (program.empty()) throw UsageError("--rsh-agent '" + agent + "' names no program; give a path or a name on PATH");
  if (program.find('/') == std::string::npos) return agent;  // found on PATH by mpirun, as ssh is
  struct stat info {};
  errno = 0;
  if (stat(program.c_str(), &info) != 0 || !S_ISREG(info.st_mode) || access(program.c_str(), X_OK) != 0)
    throw UsageError("--rsh-agent: '" + program + "' is not an executable file (" +
                     (errno != 0 ? std::string(std::strerror(errno)) : "not a regular file") + ")");
  char* absolute = realpath(program.c_str(), nullptr);
  const std::string resolved = absolute != nullptr ? absolute : program;
  std::free(absolute);
  return resolved + (space == std::string::npos ? "" : agent.substr(space));
}

}  // namespace

LaunchOptions parse_launch_options(int argc, const char* const* argv) {
  LaunchOptions o;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value; see ddprun --help");
      return argv[++i];
    };
    if (arg == "--") {
      ++i;
      break;
    } else if (arg == "--np" || arg == "-np" || arg == "-n") {
      o.shape.ranks = whole_number(arg, value(), 1);
    } else if (arg == "--gpus-per-node") {
      o.shape.gpus_per_node = whole_number(arg, value(), 1);
    } else if (arg == "-H" || arg == "--host") {
      o.shape.hosts = value();
    } else if (arg == "--hostfile") {
      o.shape.hostfile = value();
    } else if (arg == "--launcher") {
      o.launcher = value();
      if (o.launcher != "mpirun" && o.launcher != "srun")
        throw UsageError("--launcher '" + o.launcher + "' is not one ddprun knows; choose mpirun or srun");
    } else if (arg == "--mpirun" || arg == "--srun") {
      o.launcher = arg.substr(2);
      o.launcher_path = value();
    } else if (arg == "-x") {
      const std::string entry = value();
      if (entry.empty() || entry[0] == '=')
        throw UsageError("-x '" + entry + "' names no variable; write -x VAR[=VALUE]");
      o.exports.push_back(entry);
    } else if (arg == "--rsh-agent") {
      o.rsh_agent = checked_rsh_agent(value());
    } else if (arg == "--max-restarts") {
      o.max_restarts = whole_number(arg, value(), 0);
    } else if (arg == "--restart-delay") {
      const std::string text = value();
      char* end = nullptr;
      o.restart_delay = std::strtod(text.c_str(), &end);
      if (end == text.c_str() || *end != '\0' || !std::isfinite(o.restart_delay) || o.restart_delay < 0)
        throw UsageError("--restart-delay '" + text + "' is not a number of seconds (0 or more)");
    } else if (arg == "--signal-hold") {
      const std::string text = value();
      char* end = nullptr;
      o.signal_hold = std::strtod(text.c_str(), &end);
      if (end == text.c_str() || *end != '\0' || !std::isfinite(o.signal_hold) || o.signal_hold < 0 ||
          o.signal_hold > 3600)
        throw UsageError("--signal-hold '" + text + "' is not a number of seconds from 0 to 3600");
    } else if (arg == "--no-requeue") {
      o.requeue = false;
    } else if (arg == "--dry-run") {
      o.dry_run = true;
    } else if (arg == "-h" || arg == "--help") {
      o.help = true;
      return o;
    } else {
      throw UsageError("unknown option '" + arg + "'; put the program after '--' (ddprun --np 2 -- ddptrain ...)");
    }
  }
  if (!o.shape.hosts.empty() && !o.shape.hostfile.empty())
    throw UsageError("-H and --hostfile both name hosts; give one of them");
  if (o.launcher == "srun" && !o.shape.hostfile.empty())
    throw UsageError(
        "--hostfile is Open MPI's; with --launcher srun give the hosts with -H or let the Slurm allocation "
        "name them");
  if (o.launcher == "srun" && !o.rsh_agent.empty())
    throw UsageError("--rsh-agent is for mpirun's start-up; srun starts its tasks through slurmd on each node");
  for (; i < argc; ++i) o.program.emplace_back(argv[i]);
  if (o.program.empty()) throw UsageError("no program to start; usage: ddprun --np 2 -- ddptrain [ARGS...]");
  return o;
}

}  // namespace ddprun::launcher
