// ddptrain: the per-rank trainer program. Starts the process group, parses the flags (all ranks agree on whether
// they are valid), trains, and turns every failure into one line on stderr and a non-zero exit on every rank.
//
// Exit codes: 0 success; 1 a run-time failure (data, checkpoint, collective); 2 bad flags or config.
#include "comm/agreement.h"
#include "comm/communicator.h"
#include "trainer/host_memory.h"
#include "trainer/options.h"
#include "trainer/trainer.h"

#include <cstdio>
#include <exception>
#include <memory>

using ddprun::comm::CollectiveFailure;

namespace {

void report(int rank, const CollectiveFailure& failure) {
  if (rank != 0) return;  // every rank knows the error; rank 0 prints it once
  if (failure.failed_rank() == 0) {
    std::fprintf(stderr, "ddptrain: error: %s\n", failure.what());
  } else {
    std::fprintf(stderr, "ddptrain: error on rank %d: %s\n", failure.failed_rank(), failure.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string memory_policy = ddprun::trainer::keep_freed_host_memory();
  std::unique_ptr<ddprun::comm::Communicator> comm;
  try {
    comm = ddprun::comm::make_mpi_communicator();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ddptrain: error: cannot start MPI: %s; start ddptrain with ddprun or mpirun\n",
                 ddprun::comm::error_message(e).c_str());
    return 1;
  }
  const int rank = comm->rank();

  ddprun::trainer::ParseResult parsed;
  try {
    ddprun::comm::run_on_all_ranks(*comm, [&] { parsed = ddprun::trainer::parse_options(argc, argv); });
  } catch (const CollectiveFailure& failure) {
    report(rank, failure);
    return 2;
  }
  if (parsed.help_requested) {
    if (rank == 0) std::printf("%s", parsed.help_text.c_str());
    return 0;
  }

  try {
    ddprun::trainer::train(parsed.options, *comm, memory_policy);
  } catch (const CollectiveFailure& failure) {
    report(rank, failure);
    return 1;
  } catch (const std::exception& e) {
    // Only this rank failed, in the middle of collectives the others are waiting in: end the whole job.
    std::fprintf(stderr, "ddptrain: error on rank %d: %s; aborting all ranks\n", rank,
                 ddprun::comm::error_message(e).c_str());
    std::fflush(stderr);
    comm->abort(1);
  }
  return 0;
}
