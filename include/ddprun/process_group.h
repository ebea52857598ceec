// The process group of a data-parallel job: starts MPI (and NCCL for a GPU rank), says which rank this process is
// and which device it trains on, and runs the collectives a training loop needs. Start the program with ddprun (or
// mpirun, or srun --mpi=pmix): one process per GPU.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ddprun {

struct ProcessGroupOptions {
  std::string backend = "auto";    // "auto" (NCCL for a GPU rank when built with it, else MPI), "mpi" or "nccl"
  double timeout_seconds = -1;     // a collective that takes longer ends the job with a message naming the missing
                                   // rank; -1: DDPRUN_COMM_TIMEOUT, else 300; 0: no limit; at most 604800 (a week)
  int check_collectives = -1;      // 1: before every collective, compare the ranks' tensor sizes and dtypes (one small
                                   // all-gather each); 0: never; -1: DDPRUN_COMM_CHECK (on in builds without NDEBUG)
  std::string program = "ddprun";  // what the library's lines start with ("ddprun: resumed from ...")
};

enum class ReduceOp { Sum, Average, Max, Min };

// Who started this process, as the launcher's environment says.
struct LaunchInfo {
  std::string launcher;          // "mpirun", "srun", "torchrun", or "" (started by hand)
  int ddprun_restarts = 0;       // DDPRUN_RESTART_COUNT: ddprun started the job again after a failure this often
  int slurm_requeues = 0;        // SLURM_RESTART_COUNT: Slurm requeued the job this often
  std::string describe() const;  // "started by mpirun, ddprun restart 1, Slurm requeue 2"
};

class ProcessGroup {
 public:
  // Not copied or moved: DistributedDataParallel, CheckpointManager and PreemptionGuard keep a reference to it.
  // Keep it alive (in main, say) while they are in use.
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;
  ~ProcessGroup();  // shuts the collectives down (and MPI, if it started it)

  int rank() const;
  int world_size() const;
  int local_rank() const;  // among the ranks on this node
  int local_size() const;
  // The rank's own GPU (cuda:<local rank>, or cuda:0 when the launcher gave each rank one), else the CPU.
  c10::Device device() const;
  std::string backend_name() const;  // "mpi (MPI_THREAD_MULTIPLE, ...)" or "nccl (...)"
  LaunchInfo launch() const;
  const std::string& program() const;  // ProcessGroupOptions::program

  // In place, on every rank; returns when the result is there.
  void all_reduce(const at::Tensor& tensor, ReduceOp op = ReduceOp::Sum);
  // Several tensors: all are issued at once, then all waited for.
  void all_reduce(const std::vector<at::Tensor>& tensors, ReduceOp op = ReduceOp::Sum);
  void broadcast(const at::Tensor& tensor, int root = 0);
  void barrier();
  // Every rank's text, indexed by rank (the lengths may differ).
  std::vector<std::string> all_gather_string(const std::string& text);

  // Runs `step` on this rank, then every rank learns whether it threw on any: if so, every rank throws the same
  // ddprun::Error (the exit code of what was thrown, the message of the lowest rank that failed). For what can fail
  // on one rank and must stop them all: reading the data, a configuration, a file.
  void run_on_every_rank(const std::function<void()>& step);
  // Throws SetUpError on every rank, naming the first line where a rank's `text` differs from rank 0's, when they
  // differ (flags, a configuration, a data set's size: what must be the same for the collectives to line up).
  // `what` says what it is ("flags").
  void require_same_on_every_rank(const std::string& text, const std::string& what);

  // Ends every rank of the job with `exit_code` (when ranks can no longer agree).
  [[noreturn]] void abort(int exit_code);

 private:
  struct Impl;
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  friend ProcessGroup init_process_group(const ProcessGroupOptions& options);
  friend struct LibraryAccess;
  std::unique_ptr<Impl> impl_;
};

// Call once per process, before the model is built. Throws SetUpError (errors.h) with one line: MPI cannot start,
// the launch gave every process a world of its own (torchrun, srun without --mpi=pmix), a rank has no GPU of its
// own, or NCCL cannot start (the same message on every rank); UsageError for bad options.
ProcessGroup init_process_group(const ProcessGroupOptions& options = {});

}  // namespace ddprun
