// The collective layer's one interface: who this rank is, and collectives over LibTorch tensors.
// Backends (MPI for CPU tensors today) implement it in one file each; callers never see MPI or NCCL types.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace ddprun::comm {

enum class ReduceOp { Sum, Average, Max, Min };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank and number of ranks among the processes on this node (the device index is the local rank).
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  virtual std::string backend_name() const = 0;

  // In place on every tensor; every rank passes tensors of the same sizes and dtypes in the same order.
  // Average is for floating-point tensors: the sum divided by size().
  virtual void allreduce(std::vector<at::Tensor>& tensors, ReduceOp op) = 0;
  // Every rank's tensors become a copy of root's.
  virtual void broadcast(std::vector<at::Tensor>& tensors, int root) = 0;
  // Returns every rank's bytes, indexed by rank; the lengths may differ between ranks.
  virtual std::vector<std::string> allgather_bytes(const std::string& bytes) = 0;
  virtual void barrier() = 0;
  // Ends the whole job from this rank (used when ranks can no longer agree); does not return.
  [[noreturn]] virtual void abort(int exit_code) = 0;

  void allreduce(at::Tensor& tensor, ReduceOp op);
  void broadcast(at::Tensor& tensor, int root);
};

// Starts MPI if nobody has (and finalizes it when the communicator goes away).
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace ddprun::comm
