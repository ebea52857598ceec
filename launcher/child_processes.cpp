// Starting ddprun's children and ending whatever of them outlives the launcher.
#include "launcher/child_processes.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace ddprun::launcher {
namespace {

using Clock = std::chrono::steady_clock;

// How long a process that got SIGKILL may take to go (it can be stuck in the kernel, on a hung file system) before
// ddprun stops waiting for it and says so.
constexpr double kKillWaitSeconds = 30;

// The parent pid and state letter from /proc/<pid>/stat ("pid (comm) S ppid ..."; comm may hold spaces and
// parentheses, so the fields start after the last ')'). False when the process is gone.
bool read_stat(pid_t pid, pid_t& parent, char& state) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char text[1024];
  const ssize_t n = ::read(fd, text, sizeof text - 1);
  ::close(fd);
  if (n <= 0) return false;
  text[n] = '\0';
  const char* close = std::strrchr(text, ')');
  if (close == nullptr) return false;
  int ppid = 0;
  if (std::sscanf(close + 1, " %c %d", &state, &ppid) != 2) return false;
  parent = ppid;
  return true;
}

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

bool become_subreaper() { return ::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0; }

pid_t start_child(const std::vector<std::string>& command, const sigset_t& mask) {
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(report[0]);
    close(report[1]);
    throw std::runtime_error(std::string("fork: ") + std::strerror(err));
  }
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

std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> children;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return children;
  while (const dirent* entry = readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || pid <= 0) continue;
    pid_t ppid = 0;
    char state = '?';
    if (read_stat(static_cast<pid_t>(pid), ppid, state) && ppid == parent && state != 'Z')
      children.push_back(static_cast<pid_t>(pid));
  }
  closedir(proc);
  return children;
}

LeftoverReport end_leftover_processes(double grace_seconds) {
  const auto start = Clock::now();
  LeftoverReport report;
  std::vector<pid_t> seen;
  bool kill_sent = false;
  while (true) {
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    const std::vector<pid_t> children = children_of(getpid());
    if (children.empty()) {
      // None in /proc: done once the kernel agrees that no child is left (ECHILD), zombies included.
      const pid_t reaped = waitpid(-1, nullptr, WNOHANG);
      if (reaped < 0 && errno == ECHILD) break;
    }
    const double elapsed = seconds_since(start);
    for (const pid_t child : children) {
      if (std::find(seen.begin(), seen.end(), child) == seen.end()) {
        seen.push_back(child);
        ++report.processes;
        kill(child, SIGTERM);
      }
      if (elapsed >= grace_seconds) {
        kill(child, SIGKILL);
        kill_sent = true;
      }
    }
    if (kill_sent && elapsed >= grace_seconds + kKillWaitSeconds) {
      std::string pids;
      for (const pid_t child : children) pids += " " + std::to_string(child);
      std::fprintf(stderr, "ddprun: warning: process(es)%s did not end %g s after SIGKILL (stuck in the kernel?)\n",
                   pids.c_str(), kKillWaitSeconds);
      report.complete = false;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  report.killed = kill_sent;
  report.seconds = seconds_since(start);
  return report;
}

}  // namespace ddprun::launcher
