// The job's supervisor: one child launcher at a time, signals passed on, restarts and Slurm requeues.
#include "launcher/supervisor.h"

#include "launcher/child_processes.h"
#include "launcher/ready_channel.h"

#include <poll.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace ddprun::launcher {
namespace {

// The signals ddprun passes on to the ranks.
constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
// Blocked in ddprun (main() blocks them first thing) but not in the launcher it starts.
constexpr int kBlockedHere[] = {SIGPIPE, SIGXCPU, SIGXFSZ};

using Clock = std::chrono::steady_clock;

bool is_preemption(int signal) { return signal == SIGUSR1 || signal == SIGUSR2; }

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

void say(const std::string& line) {
  std::fprintf(stderr, "ddprun: %s\n", line.c_str());
  std::fflush(stderr);
}

std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%g s", seconds);
  return text;
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
  if (code == kExitDiverged) what = "training diverged: a NaN or inf loss";
  if (code == kExitPreempted) what = "preempted, checkpoint saved";
  if (code > 128 && code < 128 + 65) what = "a rank was killed by " + signal_name(code - 128);
  return "exit code " + std::to_string(code) + (what.empty() ? "" : " (" + what + ")");
}

Decision decide(const JobEnd& end, bool signalled, int restart, int max_restarts, bool ranks_preempted) {
  const int code = exit_code_of(end);
  if (code == 0) return Decision::Finished;
  if (code == kExitPreempted || (signalled && ranks_preempted)) return Decision::Preempted;
  if (signalled) return Decision::Stopped;
  if (code == kExitUsage || code == kExitSetUpFailed || code == kExitDiverged) return Decision::Final;
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

namespace {

// The signals that wait for ddprun (blocked, read from a signalfd only here).
class SignalQueue {
 public:
  explicit SignalQueue(const sigset_t& signals) : fd_(signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error(std::string("signalfd: ") + std::strerror(errno));
  }
  ~SignalQueue() { ::close(fd_); }
  SignalQueue(const SignalQueue&) = delete;
  SignalQueue& operator=(const SignalQueue&) = delete;
  int fd() const { return fd_; }
  // The next waiting signal, or 0.
  int next() const {
    signalfd_siginfo info{};
    return ::read(fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info) ? static_cast<int>(info.ssi_signo) : 0;
  }

 private:
  int fd_;
};

// How one run of the launcher went.
struct RunResult {
  JobEnd end;
  int signalled = 0;                  // the last signal passed on (or held) during the run, or 0
  Clock::time_point first_signal_at;  // when the first of them came
  std::vector<int> never_passed;      // held for ranks that never became ready
  bool launcher_ended = false;        // ddprun ended a launcher that did not end an aborted job
  bool ranks_preempted = false;       // a rank reported exiting with kExitPreempted
};

// Reaps every exited child; true (and `status`) when `child` was one of them.
bool reap(pid_t child, int& status) {
  bool ended = false;
  int s = 0;
  for (pid_t pid; (pid = waitpid(-1, &s, WNOHANG)) > 0;) {
    if (pid == child) {
      ended = true;
      status = s;
    }
  }
  return ended;
}

// Looks after the launcher `child` until it exits: passes signals on; holds SIGUSR1/SIGUSR2 during the first
// options.signal_hold seconds until the ranks report ready on `ready`; ends the launcher when a rank reported that it
// aborts the job and the launcher has not ended it kAbortGraceSeconds later.
RunResult watch_run(pid_t child, const SignalQueue& signals, ReadyChannel& ready, const SupervisorOptions& options) {
  RunResult result;
  const auto start = Clock::now();
  bool ranks_ready = options.signal_hold <= 0;
  std::vector<int> held;
  auto pass_on = [&](int signal, const std::string& note) {
    // srun only prints its status on a first SIGINT; SIGTERM is what ends its tasks. SIGQUIT would make mpirun dump
    // core and leave its ranks: the job gets SIGTERM instead.
    const int passed = signal == SIGQUIT || (options.launcher == "srun" && signal == SIGINT) ? SIGTERM : signal;
    kill(child, passed);
    say(signal_name(signal) + ": passed on to the ranks" +
        (passed != signal ? " (as " + signal_name(passed) + ", which srun forwards)" : "") + note);
  };
  auto release = [&](const std::string& why) {
    ranks_ready = true;
    for (const int signal : held) pass_on(signal, " (held " + why + ")");
    held.clear();
  };
  int status = 0;
  bool aborting = false;
  Clock::time_point aborting_since;
  while (true) {
    int timeout_ms = -1;
    if (!ranks_ready) {
      const double left = options.signal_hold - seconds_since(start);
      if (left <= 0) {
        release("for " + seconds_text(options.signal_hold) + ": no ready report from the ranks");
        continue;
      }
      timeout_ms = static_cast<int>(std::ceil(left * 1000));
    }
    if (aborting && !result.launcher_ended) {
      const double left = kAbortGraceSeconds - seconds_since(aborting_since);
      if (left <= 0) {
        say("a rank aborted the job " + seconds_text(kAbortGraceSeconds) + " ago and " + options.launcher +
            " has not ended it (it may be waiting for a node it can no longer reach): ending " + options.launcher);
        kill(child, SIGKILL);
        result.launcher_ended = true;
        continue;
      }
      const int abort_ms = static_cast<int>(std::ceil(left * 1000));
      timeout_ms = timeout_ms < 0 ? abort_ms : std::min(timeout_ms, abort_ms);
    }
    pollfd fds[2] = {{signals.fd(), POLLIN, 0}, {ready.fd(), POLLIN, 0}};
    const nfds_t watched = ready.fd() >= 0 ? 2 : 1;
    if (poll(fds, watched, timeout_ms) < 0) continue;  // EINTR
    if (watched == 2 && (fds[1].revents & POLLIN)) {
      const ReadyChannel::Reports reports = ready.receive();
      if (reports.ready && !ranks_ready)
        release("until the ranks were ready, " + seconds_text(std::round(seconds_since(start) * 100) / 100) +
                " after the start");
      result.ranks_preempted = result.ranks_preempted || reports.preempted;
      if (reports.aborting && !aborting) {
        aborting = true;
        aborting_since = Clock::now();
      }
    }
    bool ended = false;
    for (int signal; (signal = signals.next()) != 0;) {
      if (signal == SIGCHLD) {
        ended = reap(child, status) || ended;
        continue;
      }
      if (result.signalled == 0) result.first_signal_at = Clock::now();
      result.signalled = signal;
      if (!ranks_ready && is_preemption(signal)) {
        // Held once per kind: a second SIGUSR1 in a row would take its default action in ddptrain's ranks.
        if (std::find(held.begin(), held.end(), signal) == held.end()) held.push_back(signal);
        say(signal_name(signal) + ": held until the ranks catch it (they are still starting; at most " +
            seconds_text(options.signal_hold) + " after the start)");
        continue;
      }
      pass_on(signal, "");
    }
    if (ended) break;
  }
  result.end = {WIFSIGNALED(status), WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status)};
  if (result.launcher_ended) result.end = {false, kExitFailure};  // the ranks' failure, not ddprun's SIGKILL
  result.never_passed = held;
  return result;
}

// Waits up to `seconds` for one of the forwarded signals (reaping children meanwhile); returns it, or 0.
int wait_for_signal(const SignalQueue& signals, double seconds) {
  const auto start = Clock::now();
  while (true) {
    const double left = seconds - seconds_since(start);
    if (left <= 0) return 0;
    pollfd fd{signals.fd(), POLLIN, 0};
    if (poll(&fd, 1, static_cast<int>(std::ceil(left * 1000))) < 0) continue;
    for (int signal; (signal = signals.next()) != 0;) {
      if (signal != SIGCHLD) return signal;
      int ignored = 0;
      reap(-1, ignored);
    }
  }
}

// Ends whatever of the job outlived the launcher, and says so; ddprun returns only after this. False when a
// process could not be ended (or ddprun cannot see them: it is not their subreaper).
bool end_leftovers(const std::string& launcher, bool subreaper) {
  const LeftoverReport leftovers = end_leftover_processes(kLeftoverGraceSeconds);
  if (leftovers.processes > 0) {
    say(std::to_string(leftovers.processes) + " process(es) of the job outlived " + launcher + "; ended them with " +
        (leftovers.killed ? "SIGTERM, then SIGKILL after " + seconds_text(kLeftoverGraceSeconds) : "SIGTERM") +
        ", in " + seconds_text(std::round(leftovers.seconds * 100) / 100) +
        (leftovers.complete ? "" : "; some did not end (see above)"));
  }
  return subreaper && leftovers.complete;
}

}  // namespace

int supervise(const SupervisorOptions& options, const std::function<std::vector<std::string>(int restart)>& command_for,
              const Environment& env) {
  // The signals wait for ddprun in a signalfd; the child gets ddprun's original mask back, minus these (a parent
  // that blocked them must not leave mpirun deaf to them). Ranks that outlive mpirun become ddprun's children.
  std::signal(SIGCHLD, SIG_DFL);
  sigset_t forwarded, watched, original, child_mask;
  sigemptyset(&forwarded);
  for (const int s : kForwarded) sigaddset(&forwarded, s);
  watched = forwarded;
  sigaddset(&watched, SIGCHLD);
  sigprocmask(SIG_BLOCK, &watched, &original);
  child_mask = original;
  for (const int s : kForwarded) sigdelset(&child_mask, s);
  for (const int s : kBlockedHere) sigdelset(&child_mask, s);
  sigdelset(&child_mask, SIGCHLD);
  const bool subreaper = become_subreaper();
  if (!subreaper)
    say("warning: cannot become the subreaper of the job's processes (" + std::string(std::strerror(errno)) +
        "): ranks that outlive the launcher are not waited for");
  const SignalQueue signals(watched);
  ReadyChannel ready;
  if (!ready.address().empty()) {
    setenv(kEnvReadySocket, ready.address().c_str(), 1);  // the launcher passes DDPRUN_* on to the ranks
  }

  std::string codes;  // every run's exit code, for the final report
  for (int restart = 0;; ++restart) {
    ready.receive();  // a report left over from an earlier run is not this one's
    const pid_t child = start_child(command_for(restart), child_mask);
    const RunResult run = watch_run(child, signals, ready, options);
    const bool all_gone = end_leftovers(options.launcher, subreaper);
    const JobEnd& end = run.end;
    const int signalled = run.signalled;
    if (!run.never_passed.empty())
      say(signal_name(run.never_passed.front()) + " was held while the ranks started, and the job ended before they " +
          "were ready for it");
    const int code = exit_code_of(end);
    codes += (codes.empty() ? "" : ", ") + std::to_string(code);
    const bool ranks_preempted = run.ranks_preempted || ready.receive().preempted;  // a report next to the exit
    switch (decide(end, signalled != 0, restart, options.max_restarts, ranks_preempted)) {
      case Decision::Finished:
        if (restart > 0) say("the job finished after " + std::to_string(restart) + " restart(s)");
        return 0;
      case Decision::Preempted: {
        const std::string job = slurm_job_to_requeue(env);
        if (job.empty() || !options.requeue) {
          say("preempted: the ranks saved a checkpoint and stopped (exit code 75); start the job again with "
              "--resume auto to continue where it stopped");
        } else if (requeue_slurm_job(job, child_mask)) {
          say("preempted: the ranks saved a checkpoint and stopped; requeued Slurm job " + job +
              " (scontrol requeue): it continues with --resume auto when it starts again");
        }
        return kExitPreempted;
      }
      case Decision::Stopped: {
        say("the job ended after " + signal_name(signalled) + ": " + describe(end) +
            (all_gone ? "; every process of it was gone " +
                            seconds_text(std::round(seconds_since(run.first_signal_at) * 100) / 100) +
                            " after the first signal"
                      : ""));
        // A preemption signal whose ranks did not report a saved checkpoint: still back to the queue, to continue
        // from whatever checkpoint they saved last.
        const std::string job = slurm_job_to_requeue(env);
        if (is_preemption(signalled) && !job.empty() && options.requeue && requeue_slurm_job(job, child_mask))
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
    if (const int signal = wait_for_signal(signals, delay)) {
      if (is_preemption(signal)) {
        // Preempted between two runs: the failed run's last checkpoint is where the next one continues.
        const std::string job = slurm_job_to_requeue(env);
        say(signal_name(signal) + " before the restart: not restarting; the last checkpoint stands");
        if (!job.empty() && options.requeue && requeue_slurm_job(job, child_mask))
          say("requeued Slurm job " + job + " (scontrol requeue): it continues with --resume auto");
        return kExitPreempted;
      }
      say(signal_name(signal) + " before the restart: not restarting");
      return 128 + signal;
    }
  }
}

}  // namespace ddprun::launcher
