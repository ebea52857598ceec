// ddprun::DistributedDataParallel: the engine's bucketed DDP behind the public options.
#include "ddprun/distributed_data_parallel.h"

#include "ddprun/errors.h"
#include "engine/distributed_data_parallel.h"
#include "library/access.h"

#include <stdexcept>

namespace ddprun {

struct DistributedDataParallelBase::Impl {
  std::unique_ptr<engine::DistributedDataParallel> engine;
};

DistributedDataParallelBase::DistributedDataParallelBase(std::shared_ptr<torch::nn::Module> module, ProcessGroup& group,
                                                         DdpOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (!module) throw UsageError("DistributedDataParallel: the module is null");
  if (!(options.bucket_cap_mb > 0 && options.bucket_cap_mb <= 65536))
    throw UsageError("DdpOptions::bucket_cap_mb must be positive and at most 65536 (64 GiB)");
  engine::DdpOptions engine;
  engine.bucket_cap_mb = options.bucket_cap_mb;
  engine.find_unused_parameters = options.find_unused_parameters;
  engine.broadcast_buffers = options.broadcast_buffers;
  try {
    engine.compression = engine::parse_grad_compression(options.gradient_dtype);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("DdpOptions::gradient_dtype: ") + e.what());
  }
  if (options.on_bucket_done) {
    engine.on_bucket_done = [done = std::move(options.on_bucket_done)](const engine::BucketTiming& t) {
      done({t.bucket, t.bytes, t.ready, t.done});
    };
  }
  impl_->engine =
      std::make_unique<engine::DistributedDataParallel>(std::move(module), LibraryAccess::communicator(group), engine);
}

DistributedDataParallelBase::~DistributedDataParallelBase() = default;

void DistributedDataParallelBase::before_forward() { impl_->engine->before_forward(); }

void DistributedDataParallelBase::zero_grad() { impl_->engine->zero_grad(); }

DistributedDataParallelBase::NoSync::NoSync(DistributedDataParallelBase& ddp) : ddp_(ddp) {
  ddp_.impl_->engine->set_sync(false);
}
DistributedDataParallelBase::NoSync::~NoSync() { ddp_.impl_->engine->set_sync(true); }

}  // namespace ddprun
