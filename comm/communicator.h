// The collective layer's one interface: who this rank is, and asynchronous collectives over LibTorch tensors.
// Backends implement it in one file each (mpi_communicator.cpp for CPU tensors, nccl_communicator.cpp for CUDA
// tensors); callers never see MPI or NCCL types.
//
// Every rank must issue the same collectives in the same order with tensors of the same sizes and dtypes (as with
// NCCL and torch.distributed). Collectives run in issue order; each returns a Work handle at once.
#pragma once

#include "comm/comm_options.h"
#include "ddprun/errors.h"

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ddprun::comm {

enum class ReduceOp { Sum, Average, Max, Min };
const char* to_string(ReduceOp op);

// A collective that failed (a transport error, a shape mismatch found by the shape check), one line; a ddprun::Error
// with exit code 1 (kExitFailure), on this rank alone unless `failed_rank` says every rank knows it.
class CommError : public Error {
 public:
  explicit CommError(const std::string& message, int failed_rank = -1, int exit_code = kExitFailure)
      : Error(exit_code, message, failed_rank) {}
};

// The handle of one collective in flight.
class Work {
 public:
  virtual ~Work() = default;
  // Returns when the result may be used: MPI returns when the tensors hold it; NCCL returns at once after making the
  // current CUDA stream wait for it (as torch.distributed's Work.wait does). Throws CommError if the collective
  // failed. A collective that outlives the communicator's timeout aborts the job, so wait() does not hang forever.
  virtual void wait() = 0;
  // Blocks the calling thread until the collective has completed (true) or `timeout` has passed (false; it is still
  // in flight and may be waited on again). Throws CommError if it failed.
  virtual bool wait(std::chrono::milliseconds timeout) = 0;
  // Completed (successfully or not), without blocking. NCCL: the collective has finished on the GPU; results for
  // non-contiguous tensors are copied into them by wait().
  virtual bool completed() = 0;
  // When the collective finished (steady clock), for timelines; meaningful once completed(). NCCL: when the host
  // first noticed (the watchdog looks every 50 ms at most, wait(timeout) at once).
  virtual std::chrono::steady_clock::time_point finished_at() = 0;
};
using WorkHandle = std::shared_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank and number of ranks among the processes on this node (the device index is the local rank).
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  // "mpi" or "nccl", with what matters about it, e.g. "mpi (MPI_THREAD_MULTIPLE, not CUDA-aware)".
  virtual std::string backend_name() const = 0;
  virtual const CommOptions& options() const = 0;

  // In place on every tensor. Any floating dtype or integer dtype; Average is for floating dtypes (the sum divided
  // by size()). The tensors must stay untouched until the work has completed.
  [[nodiscard]] virtual WorkHandle allreduce(std::vector<at::Tensor> tensors, ReduceOp op) = 0;
  // Every rank's tensors become a copy of root's.
  [[nodiscard]] virtual WorkHandle broadcast(std::vector<at::Tensor> tensors, int root) = 0;
  // outputs[r] receives rank r's input; every output has the input's sizes and dtype.
  [[nodiscard]] virtual WorkHandle allgather(std::vector<at::Tensor> outputs, at::Tensor input) = 0;
  [[nodiscard]] virtual WorkHandle barrier() = 0;

  // Blocking: every rank's bytes, indexed by rank; the lengths may differ between ranks. For small host-side
  // metadata (agreement, fingerprints).
  virtual std::vector<std::string> allgather_bytes(const std::string& bytes) = 0;
  // Every rank's `call` (a library call's name: "CheckpointManager::save()"), once every rank made one. The library's
  // collective calls start with it, so that a call made on some ranks only is found within a second or two, with
  // one line naming it, instead of hanging until the timeout in a collective that has nothing to do with it. Throws
  // CommError on this rank when another will never make one (it waits in a collective this rank has not issued, or
  // no longer answers) or, with a timeout, when they do not all make one within it.
  virtual std::vector<std::string> rendezvous(const std::string& call) = 0;
  // Ends the whole job from this rank (used when ranks can no longer agree); does not return.
  [[noreturn]] virtual void abort(int exit_code) = 0;

  [[nodiscard]] WorkHandle allreduce(const at::Tensor& tensor, ReduceOp op);
  [[nodiscard]] WorkHandle broadcast(const at::Tensor& tensor, int root);
};

// Starts MPI if nobody has (and finalizes it when the communicator goes away). CPU tensors are reduced in place;
// tensors on other devices go through a host copy.
std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& options = comm_options_from_env());

}  // namespace ddprun::comm
