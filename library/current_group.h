// The process group this process has started, if any: run_main reports through it (its rank) and ends the job
// through it when only one rank failed. Inside the library only.
#pragma once

#include <memory>
#include <string>

namespace ddprun {
class ProcessGroup;
namespace comm {
class Communicator;
}
}  // namespace ddprun

namespace ddprun::library {

void set_current_group(ProcessGroup* group);
void clear_current_group(ProcessGroup* group);  // when it is the current one
ProcessGroup* current_group();
// A ProcessGroup destroyed by an exception on its way out of main leaves its communicator here, not shut down:
// shutting MPI down waits for the other ranks, which may be waiting for this one. run_main ends the job through it
// (one rank failed) or shuts it down (every rank threw the same error).
void keep_unwound_communicator(std::unique_ptr<comm::Communicator> communicator);
// ProcessGroupOptions::program of the latest init_process_group, also when it failed ("ddprun" before one).
void set_program(const std::string& program);
std::string program();

}  // namespace ddprun::library
