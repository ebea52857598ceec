// DistributedDataParallel for a LibTorch module, used as PyTorch's DDP is:
//   ddprun::DistributedDataParallel ddp(net, group);   // net: std::shared_ptr<Net> (or a torch::nn ModuleHolder)
//   auto out = ddp(x);                                  // or ddp->forward(x): rank 0's buffers first, then net's
//   forward loss.backward();                                    // gradients averaged over the ranks during backward
//   optimizer.zero_grad(); optimizer.step();            // the optimizer's own calls work as usual
//   ddp.module();                                       // model_without_ddp, for saving
// At construction rank 0's parameters and buffers reach every rank; during backward the gradients are all-reduced
// (averaged) in buckets while backward goes on, so after loss.backward() every rank holds the same averaged gradients
// and takes the same optimizer step. Calling the module's forward directly, not through the wrapper, skips the
// buffer broadcast: with buffers (BatchNorm statistics) on more than one rank, the next backward says so.
#pragma once

#include "ddprun/process_group.h"

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

namespace ddprun {

// One bucket's all-reduce in one backward: when its last gradient was ready (and it went out) and when it was done.
struct BucketTiming {
  size_t bucket;
  int64_t bytes;  // on the wire
  std::chrono::steady_clock::time_point ready, done;
};

struct DdpOptions {
  double bucket_cap_mb = 25;            // gradient bucket size (the first bucket is 1 MiB)
  bool find_unused_parameters = false;  // a parameter that gets no gradient counts as zero instead of an error
  bool broadcast_buffers = true;        // rank 0's buffers (BatchNorm statistics) reach every rank before each forward
  std::string gradient_dtype = "none";  // "none", "fp16" or "bf16": the gradients' dtype on the wire
  // Called at the end of each synced backward, once per bucket (for timelines).
  std::function<void(const BucketTiming&)> on_bucket_done;
};

// What does not depend on the module's type (DistributedDataParallel below adds forward).
class DistributedDataParallelBase {
 public:
  DistributedDataParallelBase(const DistributedDataParallelBase&) = delete;
  DistributedDataParallelBase& operator=(const DistributedDataParallelBase&) = delete;

  // What forward() does before the module's forward: broadcasts rank 0's buffers (when the module has any). Call it
  // yourself only if you call the module directly.
  void before_forward();
  // Zeros the gradients in place, in their buckets (the optimizer's zero_grad() works as well).
  void zero_grad();

  // While one is alive, backward accumulates gradients on each rank without communication; the first backward
  // after it averages the sums (gradient accumulation), as PyTorch's no_sync().
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallelBase& ddp);
    ~NoSync();
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    DistributedDataParallelBase& ddp_;
  };
  NoSync no_sync() { return NoSync(*this); }

 protected:
  // Every rank must wrap the same network (names, shapes, dtypes; checked: UsageError on every rank naming the first
  // difference).
  DistributedDataParallelBase(std::shared_ptr<torch::nn::Module> module, ProcessGroup& group, DdpOptions options);
  ~DistributedDataParallelBase();

 private:
  struct Impl;
  friend struct LibraryAccess;
  std::unique_ptr<Impl> impl_;
};

template <typename Module>
class DistributedDataParallel : public DistributedDataParallelBase {
 public:
  DistributedDataParallel(std::shared_ptr<Module> module, ProcessGroup& group, DdpOptions options = {})
      : DistributedDataParallelBase(module, group, std::move(options)), module_(std::move(module)) {}
  DistributedDataParallel(const torch::nn::ModuleHolder<Module>& module, ProcessGroup& group, DdpOptions options = {})
      : DistributedDataParallel(module.ptr(), group, std::move(options)) {}

  // The module's forward, after rank 0's buffers reached this rank.
  template <typename... Args>
  decltype(auto) forward(Args&&... args) {
    before_forward();
    return module_->forward(std::forward<Args>(args)...);
  }
  template <typename... Args>
  decltype(auto) operator()(Args&&... args) {
    return forward(std::forward<Args>(args)...);
  }
  // ddp->forward(x), as with a torch::nn ModuleHolder.
  DistributedDataParallel* operator->() { return this; }

  // The wrapped module (PyTorch's model_without_ddp): what to save, evaluate, or hand to the optimizer.
  const std::shared_ptr<Module>& module() const { return module_; }

 private:
  std::shared_ptr<Module> module_;
};

template <typename Module>
DistributedDataParallel(std::shared_ptr<Module>, ProcessGroup&) -> DistributedDataParallel<Module>;
template <typename Module>
DistributedDataParallel(std::shared_ptr<Module>, ProcessGroup&, DdpOptions) -> DistributedDataParallel<Module>;
template <typename Module>
DistributedDataParallel(const torch::nn::ModuleHolder<Module>&, ProcessGroup&) -> DistributedDataParallel<Module>;
template <typename Module>
DistributedDataParallel(const torch::nn::ModuleHolder<Module>&, ProcessGroup&, DdpOptions)
    -> DistributedDataParallel<Module>;

}  // namespace ddprun
