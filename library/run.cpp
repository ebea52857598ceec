// run_main and the process's current group: exceptions turned into ddprun's exit codes, one line each.
#include "ddprun/run.h"

#include "comm/agreement.h"
#include "comm/communicator.h"
#include "comm/launch_environment.h"
#include "comm/ready_report.h"
#include "ddprun/errors.h"
#include "ddprun/process_group.h"
#include "library/current_group.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>

namespace ddprun {
namespace library {
namespace {

std::atomic<ProcessGroup*> current{nullptr};
std::unique_ptr<comm::Communicator> unwound_communicator;  // keep_unwound_communicator
std::mutex program_mutex;
std::string program_name = "ddprun";

}  // namespace

void set_program(const std::string& program) {
  std::lock_guard<std::mutex> lock(program_mutex);
  program_name = program;
}
std::string program() {
  std::lock_guard<std::mutex> lock(program_mutex);
  return program_name;
}

void set_current_group(ProcessGroup* group) { current = group; }
void clear_current_group(ProcessGroup* group) {
  ProcessGroup* expected = group;
  current.compare_exchange_strong(expected, nullptr);
}
ProcessGroup* current_group() { return current; }
void keep_unwound_communicator(std::unique_ptr<comm::Communicator> communicator) {
  unwound_communicator = std::move(communicator);
}

}  // namespace library

namespace {

// Prints the failure and returns the exit code, or ends the job when only this rank knows of it.
int report(int exit_code, int failed_rank, const std::string& message) {
  ProcessGroup* group = library::current_group();
  comm::Communicator* unwound = library::unwound_communicator.get();  // the group went out of scope with the exception
  const int rank = group ? group->rank() : unwound ? unwound->rank() : comm::read_launch_environment().rank;
  const int size = group ? group->world_size() : unwound ? unwound->size() : 1;
  const std::string program = library::program();
  if (failed_rank >= 0) {  // every rank threw it: rank 0 says it once
    if (rank == 0) {
      if (failed_rank == 0) {
        std::fprintf(stderr, "%s: error: %s\n", program.c_str(), message.c_str());
      } else {
        std::fprintf(stderr, "%s: error on rank %d: %s\n", program.c_str(), failed_rank, message.c_str());
      }
    }
    std::fflush(stderr);
    library::unwound_communicator.reset();  // every rank is here: MPI shuts down together
    return exit_code;
  }
  const bool others = size > 1;
  std::fprintf(stderr, "%s: error on rank %d: %s%s\n", program.c_str(), rank, message.c_str(),
               others ? "; aborting all ranks" : "");
  std::fflush(stderr);
  // The other ranks wait in a collective for this one: end them.
  if (others && group) group->abort(exit_code);
  if (others && unwound) unwound->abort(exit_code);
  return exit_code;
}

}  // namespace

int run_main(int argc, char** argv, const std::function<int(int argc, char** argv)>& main) {
  try {
    const int code = main(argc, argv);
    if (code == kExitPreempted) comm::report_job_preempted();  // ddprun: preempted, whatever the launcher does next
    return code;
  } catch (const Error& e) {
    return report(e.exit_code(), e.failed_rank(), comm::error_message(e));
  } catch (const std::exception& e) {
    return report(kExitFailure, -1, comm::error_message(e));
  } catch (...) {
    return report(kExitFailure, -1, "unknown error (not a std::exception)");
  }
}

}  // namespace ddprun
