// DistributedDataParallel: PyTorch's DDP for a LibTorch module. Gradients land in flat buckets (the parameters'
// .grad share the bucket's memory, as PyTorch's gradient_as_bucket_view, without being autograd views, so that
// torch::optim's zero_grad, which detaches each gradient in place, works on them); a hook on each parameter's gradient
// accumulator marks it ready during backward, and a bucket whose parameters are all ready is all-reduced (averaged) at
// once, asynchronously, while backward goes on. The end of backward waits only for what is still in flight.
//
// Buckets hold parameters in reverse registration order (roughly the order backward produces them), the first one
// small (1 MiB) so communication starts early, the others up to bucket_cap_mb; after the first backward they are
// rebuilt once in the order the gradients actually became ready (rank 0's order, so every rank agrees).
#pragma once

#include "comm/communicator.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace torch::autograd {
struct Node;
}

namespace ddprun::engine {

enum class GradCompression { None, Fp16, Bf16 };
// "none", "fp16" or "bf16"; anything else throws std::invalid_argument.
GradCompression parse_grad_compression(const std::string& name);

// One bucket's all-reduce in one backward: when its last gradient was ready (and it went out) and when it was done.
struct BucketTiming {
  size_t bucket;
  int64_t bytes;  // on the wire
  std::chrono::steady_clock::time_point ready, done;
};

struct DdpOptions {
  double bucket_cap_mb = 25;            // later buckets
  double first_bucket_mb = 1;           // the first bucket (the last layers' gradients)
  bool find_unused_parameters = false;  // a parameter without a gradient counts as zero instead of an error
  bool broadcast_buffers = true;        // rank 0's buffers (BatchNorm statistics) reach every rank before each forward
  GradCompression compression = GradCompression::None;  // the dtype of the all-reduce on the wire
  // Called at the end of each synced backward, once per bucket (for --timeline).
  std::function<void(const BucketTiming&)> on_bucket_done;
};

class DistributedDataParallel {
 public:
  // Checks that every rank has the same parameters (names, shapes, dtypes), broadcasts rank 0's parameters and
  // buffers, makes each parameter's .grad share its bucket's memory and installs the hooks. Throws UsageError on
  // every rank when the parameters differ.
  DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, comm::Communicator& comm, DdpOptions options);
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  // Call before each forward: broadcasts rank 0's buffers (when the module has any and broadcast_buffers is set).
  void before_forward();

  // Zeros every gradient in place, one fill per bucket, and puts back any .grad that was replaced (the optimizer's
  // zero_grad works too: LibTorch 1.x zeros each .grad in place, 2.x resets it and the next backward brings it back
  // into its bucket).
  void zero_grad();

  // Whether `module` is wrapped by a DistributedDataParallel now (for a checkpoint's warning about unwrapped models).
  static bool wraps(const torch::nn::Module& module);

  // While a NoSync is alive, backward accumulates gradients locally without communication (gradient accumulation);
  // the first backward after it all-reduces the accumulated sums.
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallel& ddp) : ddp_(ddp) { ddp_.sync_ = false; }
    ~NoSync() { ddp_.sync_ = true; }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    DistributedDataParallel& ddp_;
  };
  NoSync no_sync() { return NoSync(*this); }
  // What NoSync does, for wrappers that keep their own guard: false until set back, backward does not communicate.
  void set_sync(bool sync) { sync_ = sync; }

  // Parameter indices (registration order) per bucket, in all-reduce order.
  std::vector<std::vector<size_t>> bucket_layout() const;
  bool buckets_rebuilt() const { return rebuilt_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    at::Tensor data;             // flat: the gradients of `params`, back to back
    at::Tensor wire;             // what travels when compressing
    size_t pending = 0;          // parameters not yet ready in this backward
    comm::WorkHandle work;
    std::chrono::steady_clock::time_point ready_at;
  };

  void build_buckets(const std::vector<size_t>& order);
  void install_hooks();
  void mark_ready(size_t param);
  void launch_ready_buckets();
  void finish_backward();
  void reset_for_next_backward();

  std::shared_ptr<torch::nn::Module> module_;
  comm::Communicator& comm_;
  DdpOptions options_;
  std::vector<at::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> buffers_;  // detached: they share the module's storage
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;    // parameter -> bucket
  std::vector<at::Tensor> views_;    // parameter -> its .grad, a view into its bucket
  std::vector<bool> ready_;          // parameter ready in this backward
  std::vector<size_t> ready_order_;  // the first backward's order, for the rebuild
  size_t next_bucket_ = 0;           // buckets are all-reduced in index order on every rank
  bool backward_started_ = false;
  bool sync_ = true;
  bool rebuilt_ = false;
  bool forward_seen_ = false;  // before_forward ran since the last synced backward
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks_;
};

}  // namespace ddprun::engine
