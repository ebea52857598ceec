// DistributedDataParallel for a LibTorch module, as PyTorch's DDP: rank 0's parameters and buffers reach every rank
// at the start, and during backward the gradients are all-reduced (averaged) in buckets while backward goes on, so
// after loss.backward() every rank holds the same averaged gradients and takes the same optimizer step.
#pragma once

#include "ddprun/process_group.h"

#include <torch/nn/module.h>

#include <memory>

namespace ddprun {
namespace trainer {
class DistributedDataParallel;
}

struct DdpOptions {
  double bucket_cap_mb = 25;            // gradient bucket size (the first bucket is 1 MiB)
  bool find_unused_parameters = false;  // a parameter that gets no gradient counts as zero instead of an error
  bool broadcast_buffers = true;        // rank 0's buffers (BatchNorm statistics) reach every rank before each forward
  std::string gradient_dtype = "none";  // "none", "fp16" or "bf16": the gradients' dtype on the wire
};

class DistributedDataParallel {
 public:
  // Every rank must wrap the same network (names, shapes, dtypes; checked, or every rank throws naming the first
  // difference). The module keeps working as before: call its forward as usual.
  DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, ProcessGroup& group, DdpOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  // Call before each forward (broadcasts rank 0's buffers when the module has any).
  void before_forward();
  // Call instead of the optimizer's zero_grad(): zeros the gradients in place, in their buckets. (LibTorch's
  // Optimizer::zero_grad() detaches every gradient in place, which DDP's bucket views refuse with an error.)
  void zero_grad();

  // While one is alive, backward accumulates gradients on each rank without communication; the first backward
  // after it averages the sums (gradient accumulation).
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallel& ddp);
    ~NoSync();
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    struct State;
    std::unique_ptr<State> state_;
  };
  NoSync no_sync() { return NoSync(*this); }

 private:
  std::unique_ptr<trainer::DistributedDataParallel> engine_;
};

}  // namespace ddprun
