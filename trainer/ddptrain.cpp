// ddptrain: the per-rank trainer program. Starts the process group, parses the flags (all ranks agree on whether
// they are valid), trains, and turns every failure into one line on stderr and a non-zero exit on every rank.
//
// Exit codes (ddprun/launch_contract.h): 0 success (also a --stop-after-steps stop); 1 a failure during training (a
// checkpoint write, a collective, one rank's error); 2 bad flags or config; 3 failed before training started (MPI,
// the launch, devices, data, the output folder, the checkpoint to resume); 4 a NaN/inf loss stopped training; 75
// preempted (a --preempt-signals signal), checkpoint saved: requeue and --resume auto. ddprun restarts the job after
// 1 (--max-restarts), not after 2, 3 or 4.
#include "comm/agreement.h"
#include "comm/communicator.h"
#include "comm/factory.h"
#include "comm/launch_environment.h"
#include "comm/ready_report.h"
#include "trainer/host_memory.h"
#include "trainer/options.h"
#include "trainer/preemption.h"
#include "trainer/trainer.h"

#include <torch/cuda.h>

#include <chrono>
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
  // Every rank parses its flags first (they set the communicator's timeout); the ranks agree on the outcome once
  // the process group runs, so a bad flag stops every rank with one message.
  ddprun::trainer::ParseResult parsed;
  std::string usage_error;
  try {
    parsed = ddprun::trainer::parse_options(argc, argv);
  } catch (const std::exception& e) {
    usage_error = ddprun::comm::error_message(e);
  }
  ddprun::comm::CommOptions comm_options;
  if (usage_error.empty()) {
    // As early as possible: a preemption signal during start-up (MPI, data, resume) must not kill the rank; the
    // ranks see it at their first step boundary.
    ddprun::trainer::watch_preemption_signals(ddprun::trainer::parse_signal_list(parsed.options.preempt_signals));
    comm_options = ddprun::comm::comm_options_from_env();  // valid: parse_options checked it
    comm_options.timeout = std::chrono::milliseconds(static_cast<int64_t>(parsed.options.comm_timeout * 1000));
    comm_options.check_shapes = parsed.options.comm_check;
  }

  const ddprun::comm::LaunchEnvironment launch = ddprun::comm::read_launch_environment();
  std::unique_ptr<ddprun::comm::Communicator> comm;
  try {
    comm = ddprun::comm::make_mpi_communicator(comm_options);
    ddprun::comm::check_launch_matches(launch, comm->rank(), comm->size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ddptrain: error on rank %d: cannot start the process group: %s\n", launch.rank,
                 ddprun::comm::error_message(e).c_str());
    return ddprun::kExitSetUpFailed;
  }
  const int rank = comm->rank();
  try {
    ddprun::comm::run_on_all_ranks(*comm, [&] {
      if (!usage_error.empty()) throw ddprun::trainer::UsageError(usage_error);
    });
  } catch (const CollectiveFailure& failure) {
    report(rank, failure);
    return ddprun::kExitUsage;
  }
  // Every rank has caught its preemption signals since before MPI started: ddprun may pass them on from now.
  if (rank == 0) ddprun::comm::report_ranks_ready();
  if (parsed.help_requested) {
    if (rank == 0) std::printf("%s", parsed.help_text.c_str());
    return 0;
  }

  // NCCL on top of MPI when this rank trains on a GPU (or when asked for).
  const ddprun::comm::Backend backend = ddprun::comm::parse_backend(parsed.options.backend);
  const c10::DeviceType device = torch::cuda::is_available() ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  if (ddprun::comm::uses_nccl(backend, device)) {
    try {
      comm = ddprun::comm::make_nccl_communicator(std::move(comm), comm_options);
    } catch (const CollectiveFailure& failure) {  // every rank knows it
      report(rank, failure);
      return ddprun::kExitSetUpFailed;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ddptrain: error on rank %d: %s\n", rank, ddprun::comm::error_message(e).c_str());
      return ddprun::kExitSetUpFailed;
    }
  }

  try {
    if (ddprun::trainer::train(parsed.options, *comm, memory_policy) == ddprun::trainer::TrainOutcome::Preempted)
      return ddprun::kExitPreempted;
  } catch (const ddprun::trainer::SetUpFailure& failure) {
    report(rank, failure);
    return ddprun::kExitSetUpFailed;
  } catch (const ddprun::trainer::DivergedFailure& failure) {
    report(rank, failure);
    return ddprun::kExitDiverged;
  } catch (const CollectiveFailure& failure) {
    report(rank, failure);
    return ddprun::kExitFailure;
  } catch (const std::exception& e) {
    // Only this rank failed, in the middle of collectives the others are waiting in: end the whole job.
    std::fprintf(stderr, "ddptrain: error on rank %d: %s; aborting all ranks\n", rank,
                 ddprun::comm::error_message(e).c_str());
    std::fflush(stderr);
    comm->abort(1);
  }
  return 0;
}
