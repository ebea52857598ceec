// ddptrain: the per-rank trainer program, a client of ddprun's public library. Catches its preemption signals
// before anything else, starts the process group, has the ranks agree on whether the flags are valid (so that a bad
// flag stops every rank with one line), trains, and leaves every failure to run_main: one line on stderr and the
// exit code of the contract (ddprun/launch_contract.h).
//
// Exit codes: 0 success (also a --stop-after-steps stop); 1 a failure during training (a checkpoint write, a
// collective, one rank's error); 2 bad flags or config; 3 failed before training started (MPI, the launch, devices,
// data, the output folder, the checkpoint to resume); 4 a NaN/inf loss stopped training; 75 preempted (a
// --preempt-signals signal), checkpoint saved: requeue and --resume auto. ddprun restarts the job after 1
// (--max-restarts), not after 2, 3 or 4.
#include "ddprun/errors.h"
#include "ddprun/preemption_guard.h"
#include "ddprun/process_group.h"
#include "ddprun/run.h"
#include "trainer/host_memory.h"
#include "trainer/options.h"
#include "trainer/trainer.h"

#include <cstdio>
#include <exception>
#include <string>

namespace {

int ddptrain(int argc, char** argv) {
  const std::string memory_policy = ddprun::trainer::keep_freed_host_memory();
  // Every rank parses its flags first (they set the process group's options); the ranks agree on the outcome once
  // the group runs, so a bad flag stops every rank with one message.
  ddprun::trainer::ParseResult parsed;
  std::string usage_error;
  try {
    parsed = ddprun::trainer::parse_options(argc, argv);
  } catch (const std::exception& e) {
    usage_error = e.what();
  }
  ddprun::ProcessGroupOptions group_options;
  group_options.program = "ddptrain";
  if (usage_error.empty()) {
    // As early as possible: a preemption signal during start-up (MPI, data, resume) must not kill the rank; the
    // ranks see it at their first step boundary.
    ddprun::catch_preemption_signals(ddprun::parse_signal_list(parsed.options.preempt_signals));
    group_options.backend = parsed.options.backend;
    group_options.timeout_seconds = parsed.options.comm_timeout;
    group_options.check_collectives = parsed.options.comm_check ? 1 : -1;
  }
  ddprun::ProcessGroup group = ddprun::init_process_group(group_options);
  group.run_on_every_rank([&] {
    if (!usage_error.empty()) throw ddprun::UsageError(usage_error);
  });
  if (parsed.help_requested) {
    if (group.rank() == 0) std::printf("%s", parsed.help_text.c_str());
    return 0;
  }
  return ddprun::trainer::train(parsed.options, group, memory_policy);
}

}  // namespace

int main(int argc, char** argv) { return ddprun::run_main(argc, argv, ddptrain); }
