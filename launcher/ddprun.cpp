// ddprun: starts one rank per GPU through mpirun (or srun), passes signals on to every rank, restarts the job after
// a failure (--max-restarts, with --resume auto) and requeues it under Slurm after a preemption. It shares no code
// with the ranks: it builds a command line and looks after the process it starts.
//
//   ddprun [options] -- PROGRAM [ARGS...]        (ddprun --help lists the options and the exit codes)
#include "launcher/environment.h"
#include "launcher/job_shape.h"
#include "launcher/launch_command.h"
#include "launcher/launch_options.h"
#include "launcher/supervisor.h"

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

namespace {

using namespace ddprun::launcher;

std::string folder_of_this_program() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return "";
  const std::string self(path, static_cast<size_t>(n));
  return self.substr(0, self.rfind('/'));
}

int cores_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
}

// Sets `name` for the launcher (and through it the ranks), in this process and in `env`.
void set_for_ranks(Environment& env, const std::string& name, const std::string& value, bool overwrite) {
  if (!overwrite && lookup(env, name)) return;
  setenv(name.c_str(), value.c_str(), 1);
  env[name] = value;
}

int run(int argc, char** argv) {
  LaunchOptions options = parse_launch_options(argc, argv);
  if (options.help) {
    std::fputs(kLaunchUsage, stdout);
    return 0;
  }
  // A program named without a folder that sits next to ddprun (ddptrain) is started from there.
  std::string& program = options.program.front();
  if (program.find('/') == std::string::npos) {
    const std::string beside = folder_of_this_program() + "/" + program;
    if (access(beside.c_str(), X_OK) == 0) program = beside;
  }
  Environment env = current_environment();
  options.shape.local_cores = cores_available();
  rlimit processes{};
  if (getrlimit(RLIMIT_NPROC, &processes) == 0 && processes.rlim_cur != RLIM_INFINITY)
    options.shape.process_limit = static_cast<long>(std::min<rlim_t>(processes.rlim_cur, LONG_MAX));
  const JobShape shape = plan_job(options.shape, env);

  // Ranks cannot tell whether mpirun's output reaches a terminal (their stdout is a pseudo-terminal either way).
  set_for_ranks(env, "DDPRUN_PROGRESS", isatty(STDOUT_FILENO) ? "1" : "0", false);
  if (options.dry_run) {
    std::printf("%s\n", shell_line(build_launch_command(options, shape, env, 0)).c_str());
    return 0;
  }
  if (geteuid() == 0 && options.launcher == "mpirun") {
    // Open MPI refuses to start as root unless both are set; ddprun's users on containers and CI run as root.
    set_for_ranks(env, "OMPI_ALLOW_RUN_AS_ROOT", "1", false);
    set_for_ranks(env, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", false);
  }
  std::string where = "ddprun: " + shape.reason + ", started with " + options.launcher;
  if (const std::string* job = lookup(env, "SLURM_JOB_ID")) {
    const std::string* count = lookup(env, "SLURM_RESTART_COUNT");
    where += "; Slurm job " + *job + ", SLURM_RESTART_COUNT=" + (count ? *count : std::string("0")) +
             (count && *count != "0" ? " (requeued " + *count + " time(s))" : " (first run)");
  }
  std::fprintf(stderr, "%s\n", where.c_str());

  SupervisorOptions supervision;
  supervision.launcher = options.launcher;
  supervision.max_restarts = options.max_restarts;
  supervision.restart_delay = options.restart_delay;
  supervision.requeue = options.requeue;
  supervision.signal_hold = options.signal_hold;
  return supervise(
      supervision,
      [&](int restart) {
        // The ranks can tell a restart by ddprun from a first run (ddptrain reports it).
        set_for_ranks(env, "DDPRUN_RESTART_COUNT", std::to_string(restart), true);
        return build_launch_command(options, shape, env, restart);
      },
      env);
}

}  // namespace

int main(int argc, char** argv) {
  // A preemption signal that arrives while ddprun starts must not end it (their default action): it waits, blocked,
  // until the supervisor reads it and passes it on once the ranks can take it. Nor may a signal that would end ddprun
  // without its ranks: SIGPIPE (its output piped to a tee that a Ctrl-C ended), SIGXCPU, SIGXFSZ (the launcher
  // gets them back as their default).
  sigset_t early;
  sigemptyset(&early);
  for (const int s : {SIGUSR1, SIGUSR2, SIGPIPE, SIGXCPU, SIGXFSZ}) sigaddset(&early, s);
  sigprocmask(SIG_BLOCK, &early, nullptr);
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "ddprun: error: %s\n", e.what());
  } catch (const std::invalid_argument& e) {  // the job's shape: a flag or a Slurm variable it cannot use
    std::fprintf(stderr, "ddprun: error: %s\n", e.what());
  } catch (const std::exception& e) {  // the launcher cannot be started, or ddprun cannot watch it
    const bool no_launcher = std::string(e.what()).rfind("cannot start '", 0) == 0;
    std::fprintf(stderr, "ddprun: error: %s%s\n", e.what(),
                 no_launcher ? "; install openmpi-bin (or Slurm's srun) or pass --mpirun PATH" : "");
  }
  return ddprun::kExitUsage;
}
