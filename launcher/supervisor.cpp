// The job's supervisor: one child launcher at a time, signals passed on, restarts and Slurm requeues.
#include "launcher/supervisor.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <stdexcept>

namespace ddprun::launcher {
namespace {

// The signals ddprun passes on to the ranks.
constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};

void say(const std::string& line) {
  std::fprintf(stderr, "ddprun: %s\n", line.c_str());
  std::fflush(stderr);
}

std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%g s", seconds);
  return text;
}

// Starts `command` as a child in a process group of its own (ddprun passes signals on, so a Ctrl-C on the terminal
// reaches mpirun once, through ddprun), with `mask` as its signal mask. It dies with SIGTERM if ddprun dies first.
// Throws std::runtime_error when the program cannot be started.
pid_t start_child(const std::vector<std::string>& command, const sigset_t& mask) {
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(128 + SIGTERM);
    sigprocmask(SIG_SETMASK, &mask, nullptr);
    // The ranks read no input: mpirun would otherwise pass ddprun's stdin to rank 0 and use it up (a script's loop
    // around ddprun loses its input), and a process group that is not the terminal's foreground cannot read it.
    const int null = open("/dev/null", O_RDONLY);
    if (null > STDIN_FILENO) {
      dup2(null, STDIN_FILENO);
      close(null);
    }
    std::vector<char*> argv;
    for (const std::string& word : command) argv.push_back(const_cast<char*>(word.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    const int error = errno;
    ssize_t ignored = write(report[1], &error, sizeof error);
    (void)ignored;
    _exit(127);
  }
  setpgid(pid, pid);
  close(report[1]);
  int error = 0;
  ssize_t n;
  do {
    n = read(report[0], &error, sizeof error);
  } while (n < 0 && errno == EINTR);
  close(report[0]);
  if (n == static_cast<ssize_t>(sizeof error)) {
    waitpid(pid, nullptr, 0);
    throw std::runtime_error("cannot start '" + command.front() + "': " + std::strerror(error));
  }
  return pid;
}

// Runs scontrol requeue for the job; true when it worked.
bool requeue_slurm_job(const std::string& job, const sigset_t& mask) {
  pid_t pid;
  try {
    pid = start_child({"scontrol", "requeue", job}, mask);
  } catch (const std::exception& e) {
    say(std::string("warning: ") + e.what() + "; requeue Slurm job " + job + " yourself");
    return false;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  // Slurm carries the requeue out at once: it ends the job's processes with SIGTERM, scontrol among them when it
  // has not exited yet. ddprun holds its own SIGTERM pending: that one says the requeue is under way.
  sigset_t pending;
  sigpending(&pending);
  if (WIFSIGNALED(status) && sigismember(&pending, SIGTERM) == 1) return true;
  say("warning: 'scontrol requeue " + job + "' failed (" +
      (WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status)) : std::string("killed")) +
      "); was the job submitted with --requeue? Requeue it yourself, or resubmit it: it continues with --resume auto");
  return false;
}

// Waits up to `seconds` for one of the forwarded signals; returns it, or 0 when the time ran out.
int wait_for_signal(const sigset_t& forwarded, double seconds) {
  timespec left{static_cast<time_t>(seconds), static_cast<long>((seconds - std::floor(seconds)) * 1e9)};
  timespec end;
  clock_gettime(CLOCK_MONOTONIC, &end);
  end.tv_sec += left.tv_sec;
  end.tv_nsec += left.tv_nsec;
  if (end.tv_nsec >= 1000000000L) {
    end.tv_sec += 1;
    end.tv_nsec -= 1000000000L;
  }
  while (true) {
    const int signal = sigtimedwait(&forwarded, nullptr, &left);
    if (signal > 0) return signal;
    if (errno != EINTR) return 0;  // EAGAIN: the time is up
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    const double remaining =
        static_cast<double>(end.tv_sec - now.tv_sec) + static_cast<double>(end.tv_nsec - now.tv_nsec) / 1e9;
    if (remaining <= 0) return 0;
    left = {static_cast<time_t>(remaining), static_cast<long>((remaining - std::floor(remaining)) * 1e9)};
  }
}

}  // namespace

std::string signal_name(int signal) {
  struct Named {
    int number;
    const char* name;
  };
  static constexpr Named kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},   {SIGABRT, "SIGABRT"},
      {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"},
      {SIGUSR2, "SIGUSR2"}, {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGXCPU, "SIGXCPU"}};
  for (const Named& n : kNames)
    if (n.number == signal) return n.name;
  return "signal " + std::to_string(signal);
}

int exit_code_of(const JobEnd& end) { return end.killed ? 128 + end.value : end.value; }

std::string describe(const JobEnd& end) {
  if (end.killed) return "the launcher was killed by " + signal_name(end.value);
  const int code = end.value;
  std::string what;
  if (code == 0) what = "success";
  if (code == kExitFailure) what = "a failure";
  if (code == kExitUsage) what = "bad flags";
  if (code == kExitSetUpFailed) what = "failed before training started";
  if (code == kExitPreempted) what = "preempted, checkpoint saved";
  if (code > 128 && code < 128 + 65) what = "a rank was killed by " + signal_name(code - 128);
  return "exit code " + std::to_string(code) + (what.empty() ? "" : " (" + what + ")");
}

Decision decide(const JobEnd& end, bool signalled, int restart, int max_restarts) {
  const int code = exit_code_of(end);
  if (code == 0) return Decision::Finished;
  if (code == kExitPreempted) return Decision::Preempted;
  if (signalled) return Decision::Stopped;
  if (code == kExitUsage || code == kExitSetUpFailed) return Decision::Final;
  return restart < max_restarts ? Decision::Restart : Decision::GiveUp;
}

std::string slurm_job_to_requeue(const Environment& env) {
  const std::string* array_job = lookup(env, "SLURM_ARRAY_JOB_ID");
  const std::string* array_task = lookup(env, "SLURM_ARRAY_TASK_ID");
  if (array_job && array_task && !array_job->empty() && !array_task->empty()) return *array_job + "_" + *array_task;
  const std::string* job = lookup(env, "SLURM_JOB_ID");
  return job ? *job : "";
}

double restart_delay(const SupervisorOptions& options, int restart) {
  return std::min(kMaxRestartDelay, options.restart_delay * std::pow(2.0, restart));
}

int supervise(const SupervisorOptions& options, const std::function<std::vector<std::string>(int restart)>& command_for,
              const Environment& env) {
  // The signals wait in a queue for sigwaitinfo below; the child gets ddprun's original mask back.
  std::signal(SIGCHLD, SIG_DFL);
  sigset_t forwarded, watched, original;
  sigemptyset(&forwarded);
  for (const int s : kForwarded) sigaddset(&forwarded, s);
  watched = forwarded;
  sigaddset(&watched, SIGCHLD);
  sigprocmask(SIG_BLOCK, &watched, &original);

  std::string codes;  // every run's exit code, for the final report
  for (int restart = 0;; ++restart) {
    const pid_t child = start_child(command_for(restart), original);
    int signalled = 0;
    int status = 0;
    while (true) {
      const int signal = sigwaitinfo(&watched, nullptr);
      if (signal < 0) continue;  // EINTR
      if (signal == SIGCHLD) {
        if (waitpid(child, &status, WNOHANG) == child) break;
        continue;
      }
      // srun only prints its status on a first SIGINT; SIGTERM is what ends its tasks.
      const int passed = options.launcher == "srun" && signal == SIGINT ? SIGTERM : signal;
      kill(child, passed);
      signalled = signal;
      say(signal_name(signal) + ": passed on to the ranks" +
          (passed != signal ? " (as " + signal_name(passed) + ", which srun forwards)" : ""));
    }
    const JobEnd end{WIFSIGNALED(status), WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status)};
    const int code = exit_code_of(end);
    codes += (codes.empty() ? "" : ", ") + std::to_string(code);
    switch (decide(end, signalled != 0, restart, options.max_restarts)) {
      case Decision::Finished:
        if (restart > 0) say("the job finished after " + std::to_string(restart) + " restart(s)");
        return 0;
      case Decision::Preempted: {
        const std::string job = slurm_job_to_requeue(env);
        if (job.empty() || !options.requeue) {
          say("preempted: the ranks saved a checkpoint and stopped (exit code 75); start the job again with "
              "--resume auto to continue where it stopped");
        } else if (requeue_slurm_job(job, original)) {
          say("preempted: the ranks saved a checkpoint and stopped; requeued Slurm job " + job +
              " (scontrol requeue): it continues with --resume auto when it starts again");
        }
        return kExitPreempted;
      }
      case Decision::Stopped: {
        say("the job ended after " + signal_name(signalled) + ": " + describe(end));
        // A preemption signal whose ranks did not report a saved checkpoint: still back to the queue, to continue
        // from whatever checkpoint they saved last.
        const std::string job = slurm_job_to_requeue(env);
        if ((signalled == SIGUSR1 || signalled == SIGUSR2) && !job.empty() && options.requeue &&
            requeue_slurm_job(job, original))
          say("requeued Slurm job " + job + " (scontrol requeue): it continues from its last checkpoint");
        return code;
      }
      case Decision::Final:
        say("the job failed: " + describe(end) +
            (options.max_restarts > 0 ? "; not restarting: it would fail the same way" : ""));
        return code;
      case Decision::GiveUp:
        say("the job failed: " + describe(end) +
            (options.max_restarts > 0 ? "; no restarts left (--max-restarts " + std::to_string(options.max_restarts) +
                                            "; exit codes " + codes + ")"
                                      : ""));
        return code;
      case Decision::Restart:
        break;
    }
    const double delay = restart_delay(options, restart);
    say("the job failed: " + describe(end) + "; restart " + std::to_string(restart + 1) + " of " +
        std::to_string(options.max_restarts) + " in " + seconds_text(delay) + ", with --resume auto");
    if (const int signal = wait_for_signal(forwarded, delay)) {
      if (signal == SIGUSR1 || signal == SIGUSR2) {
        // Preempted between two runs: the failed run's last checkpoint is where the next one continues.
        const std::string job = slurm_job_to_requeue(env);
        say(signal_name(signal) + " before the restart: not restarting; the last checkpoint stands");
        if (!job.empty() && options.requeue && requeue_slurm_job(job, original))
          say("requeued Slurm job " + job + " (scontrol requeue): it continues with --resume auto");
        return kExitPreempted;
      }
      say(signal_name(signal) + " before the restart: not restarting");
      return 128 + signal;
    }
  }
}

}  // namespace ddprun::launcher
