// The processes ddprun starts and everything they start in turn: the launcher child (mpirun, srun, scontrol) in a
// process group of its own, and, since ddprun is a child subreaper, the ranks that outlive their launcher (mpirun
// exits at once on a second SIGINT and leaves its ranks running). ddprun ends those before it returns, so that no
// process of a job it ran is still writing after it exited.
#pragma once

#include <sys/types.h>

#include <csignal>
#include <string>
#include <vector>

namespace ddprun::launcher {

// Makes this process the reaper of its orphaned descendants (prctl PR_SET_CHILD_SUBREAPER): a rank whose launcher
// has exited becomes ddprun's child instead of init's. Returns false where the kernel refuses.
bool become_subreaper();

// Starts `command` in a process group of its own with `mask` as its signal mask, stdin from /dev/null; it gets
// SIGTERM if ddprun dies first. Throws std::runtime_error naming the program when it cannot be started.
pid_t start_child(const std::vector<std::string>& command, const sigset_t& mask);

// The processes whose parent is `parent` (from /proc), zombies excluded.
std::vector<pid_t> children_of(pid_t parent);

struct LeftoverReport {
  int processes = 0;     // processes that were still there after the launcher ended
  bool killed = false;   // some needed SIGKILL after `grace_seconds`
  bool complete = true;  // false: some did not end even after SIGKILL (ddprun stopped waiting for them)
  double seconds = 0;    // from the call until the last of them was reaped
};

// Reaps every exited child, then ends the children that are still there (ranks reparented to ddprun) and any that
// become its children meanwhile: SIGTERM, SIGKILL after `grace_seconds`; returns when none is left.
LeftoverReport end_leftover_processes(double grace_seconds);

}  // namespace ddprun::launcher
