// The sample order: the permutation comes from at::randperm with a CPU generator seeded like Python's, so the order
// matches torch.utils.data.DistributedSampler index for index.
#include "engine/sample_order.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/randperm.h>

#include <algorithm>

namespace ddprun::engine {

int64_t samples_per_rank(int64_t dataset_size, int world_size) { return (dataset_size + world_size - 1) / world_size; }

at::Tensor sample_order(int64_t dataset_size, int rank, int world_size, bool shuffle, int64_t seed, int64_t epoch) {
  at::Tensor order;
  if (shuffle) {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed + epoch));
    order = at::randperm(dataset_size, generator, at::TensorOptions().dtype(at::kLong));
  } else {
    order = at::arange(dataset_size, at::TensorOptions().dtype(at::kLong));
  }
  const int64_t total = samples_per_rank(dataset_size, world_size) * world_size;
  // Pad by repeating the order from its start (several times when the data set is smaller than the padding).
  while (order.size(0) < total) {
    const int64_t missing = total - order.size(0);
    order = at::cat({order, order.narrow(0, 0, std::min(missing, order.size(0)))});
  }
  return order.slice(0, rank, total, world_size).contiguous();
}

}  // namespace ddprun::engine
