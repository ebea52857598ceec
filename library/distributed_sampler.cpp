// ddprun::DistributedSampler: the engine's sample order, handed out batch by batch to a torch::data loader, with
// its state shared between copies (the loader keeps its own copy).
#include "ddprun/distributed_sampler.h"

#include "ddprun/errors.h"
#include "engine/sample_order.h"

#include <torch/serialize/archive.h>

#include <algorithm>
#include <string>

namespace ddprun {

struct DistributedSampler::State {
  int64_t dataset_size = 0;
  int rank = 0;
  int world_size = 1;
  bool shuffle = true;
  int64_t seed = 0;
  int64_t epoch = 0;
  int64_t first_batch = 0;  // where the next pass starts, in batches
  at::Tensor order;         // the current pass's indices (reset() makes it)
  int64_t position = -1;    // next index to hand out; -1 until the first next() of a pass places it
};

DistributedSampler::DistributedSampler(int64_t dataset_size, int rank, int world_size, bool shuffle, int64_t seed)
    : state_(std::make_shared<State>()) {
  if (dataset_size <= 0 || world_size <= 0 || rank < 0 || rank >= world_size)
    throw UsageError("DistributedSampler: need a non-empty data set and 0 <= rank < world_size (got size " +
                     std::to_string(dataset_size) + ", rank " + std::to_string(rank) + " of " +
                     std::to_string(world_size) + ")");
  if (seed < 0) throw UsageError("DistributedSampler: the seed must not be negative");
  *state_ = {dataset_size, rank, world_size, shuffle, seed, 0, 0, at::Tensor(), -1};
}

DistributedSampler::DistributedSampler(int64_t dataset_size, const ProcessGroup& group, bool shuffle, int64_t seed)
    : DistributedSampler(dataset_size, group.rank(), group.world_size(), shuffle, seed) {}

void DistributedSampler::set_epoch(int64_t epoch, int64_t first_batch) {
  if (epoch < 0 || first_batch < 0)
    throw UsageError("DistributedSampler::set_epoch: the epoch and the first batch must not be negative");
  state_->epoch = epoch;
  state_->first_batch = first_batch;
  state_->order = at::Tensor();  // the next reset() makes the new epoch's order
}

at::Tensor DistributedSampler::indices() const {
  return engine::sample_order(state_->dataset_size, state_->rank, state_->world_size, state_->shuffle, state_->seed,
                              state_->epoch);
}

int64_t DistributedSampler::num_samples() const {
  return engine::samples_per_rank(state_->dataset_size, state_->world_size);
}
int64_t DistributedSampler::dataset_size() const { return state_->dataset_size; }
int64_t DistributedSampler::epoch() const { return state_->epoch; }
int64_t DistributedSampler::seed() const { return state_->seed; }
bool DistributedSampler::shuffle() const { return state_->shuffle; }

void DistributedSampler::reset(torch::optional<size_t> new_size) {
  if (new_size && static_cast<int64_t>(*new_size) != state_->dataset_size)
    throw UsageError("DistributedSampler: the data set now has " + std::to_string(*new_size) +
                     " samples, the sampler was made for " + std::to_string(state_->dataset_size) +
                     "; make a new sampler");
  state_->order = indices();
  state_->position = -1;
}

torch::optional<std::vector<size_t>> DistributedSampler::next(size_t batch_size) {
  State& s = *state_;
  if (!s.order.defined()) reset();
  if (s.position < 0) {  // the pass's first batch: start at first_batch batches of this size
    s.position = std::min<int64_t>(s.first_batch * static_cast<int64_t>(batch_size), s.order.size(0));
    s.first_batch = 0;  // the next pass over the same epoch starts at its beginning
  }
  if (s.position >= s.order.size(0)) return torch::nullopt;
  const int64_t end = std::min<int64_t>(s.position + static_cast<int64_t>(batch_size), s.order.size(0));
  const int64_t* data = s.order.data_ptr<int64_t>();
  std::vector<size_t> batch(data + s.position, data + end);
  s.position = end;
  return batch;
}

void DistributedSampler::save(torch::serialize::OutputArchive& archive) const {
  archive.write("epoch", torch::tensor(state_->epoch), /*is_buffer=*/true);
  archive.write("position", torch::tensor(std::max<int64_t>(state_->position, 0)), /*is_buffer=*/true);
}

void DistributedSampler::load(torch::serialize::InputArchive& archive) {
  at::Tensor epoch, position;
  archive.read("epoch", epoch, /*is_buffer=*/true);
  archive.read("position", position, /*is_buffer=*/true);
  state_->epoch = epoch.item<int64_t>();
  state_->order = indices();
  state_->position = position.item<int64_t>();
  state_->first_batch = 0;
}

}  // namespace ddprun
