// DistributedSampler: the permutation comes from at::randperm with a CPU generator seeded like Python's, so the
// order matches torch.utils.data.DistributedSampler index for index.
#include "ddprun/distributed_sampler.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/randperm.h>

#include <stdexcept>

namespace ddprun {

DistributedSampler::DistributedSampler(int64_t dataset_size, int rank, int world_size, bool shuffle, int64_t seed)
    : dataset_size_(dataset_size), rank_(rank), world_size_(world_size), shuffle_(shuffle), seed_(seed) {
  if (dataset_size <= 0 || world_size <= 0 || rank < 0 || rank >= world_size)
    throw std::invalid_argument("DistributedSampler: need a non-empty data set and 0 <= rank < world_size");
  num_samples_ = (dataset_size + world_size - 1) / world_size;
}

at::Tensor DistributedSampler::indices() const {
  at::Tensor order;
  if (shuffle_) {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed_ + epoch_));
    order = at::randperm(dataset_size_, generator, at::TensorOptions().dtype(at::kLong));
  } else {
    order = at::arange(dataset_size_, at::TensorOptions().dtype(at::kLong));
  }
  const int64_t total = num_samples_ * world_size_;
  // Pad by repeating the order from its start (several times when the data set is smaller than the padding).
  while (order.size(0) < total) {
    const int64_t missing = total - order.size(0);
    order = at::cat({order, order.narrow(0, 0, std::min(missing, order.size(0)))});
  }
  return order.slice(0, rank_, total, world_size_).contiguous();
}

}  // namespace ddprun
