// The process group of a data-parallel job: starts MPI (and NCCL for a GPU rank), says which rank this process is
// and which device it trains on, and runs the collectives a training loop needs. Start the program with ddprun (or
// mpirun, or srun --mpi=pmix): one process per GPU.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>

namespace ddprun {
namespace comm {
class Communicator;
}

struct ProcessGroupOptions {
  std::string backend = "auto";  // "auto" (NCCL for a GPU rank when built with it, else MPI), "mpi" or "nccl"
  double timeout_seconds = -1;   // a collective that takes longer ends the job with a message naming the missing
                                 // rank; -1: DDPRUN_COMM_TIMEOUT, else 300; 0: no limit
};

enum class ReduceOp { Sum, Average, Max, Min };

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

  // In place, on every rank; returns when the result is there.
  void all_reduce(const at::Tensor& tensor, ReduceOp op = ReduceOp::Sum);
  void broadcast(const at::Tensor& tensor, int root = 0);
  void barrier();
  // Ends every rank of the job with `exit_code` (when ranks can no longer agree).
  [[noreturn]] void abort(int exit_code);

  // The collective layer underneath (comm/communicator.h), for the rest of this API.
  comm::Communicator& communicator();

 private:
  struct State;
  explicit ProcessGroup(std::unique_ptr<State> state);
  friend ProcessGroup init_process_group(const ProcessGroupOptions& options);
  std::unique_ptr<State> state_;
};

// Call once per process, before the model is built. Throws std::runtime_error with one line: MPI cannot start, the
// launch gave every process a world of its own (torchrun, srun without --mpi=pmix), a rank has no GPU of its own, or
// NCCL cannot start (the same message on every rank).
ProcessGroup init_process_group(const ProcessGroupOptions& options = {});

}  // namespace ddprun
