// ddprun::DistributedDataParallel: the trainer's bucketed DDP engine behind the public options.
#include "ddprun/distributed_data_parallel.h"

#include "trainer/distributed_data_parallel.h"

#include <optional>

namespace ddprun {

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, ProcessGroup& group,
                                                 DdpOptions options) {
  trainer::DdpOptions engine;
  engine.bucket_cap_mb = options.bucket_cap_mb;
  engine.find_unused_parameters = options.find_unused_parameters;
  engine.broadcast_buffers = options.broadcast_buffers;
  engine.compression = trainer::parse_grad_compression(options.gradient_dtype);
  engine_ = std::make_unique<trainer::DistributedDataParallel>(std::move(module), group.communicator(), engine);
}

DistributedDataParallel::~DistributedDataParallel() = default;

void DistributedDataParallel::before_forward() { engine_->before_forward(); }

void DistributedDataParallel::zero_grad() { engine_->zero_grad(); }

struct DistributedDataParallel::NoSync::State {
  explicit State(trainer::DistributedDataParallel& engine) : no_sync(engine) {}
  trainer::DistributedDataParallel::NoSync no_sync;
};

DistributedDataParallel::NoSync::NoSync(DistributedDataParallel& ddp) : state_(std::make_unique<State>(*ddp.engine_)) {}
DistributedDataParallel::NoSync::~NoSync() = default;

}  // namespace ddprun
