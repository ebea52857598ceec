// The order in which one rank sees a data set's samples in an epoch, with the semantics of PyTorch's
// torch.utils.data.DistributedSampler (drop_last=False): a permutation seeded by seed + epoch (the same on every rank),
// padded by wrapping around so that every rank gets ceil(size / world_size) samples, then every world_size-th index
// starting at the rank.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ddprun::engine {

// Samples per rank: ceil(dataset_size / world_size).
int64_t samples_per_rank(int64_t dataset_size, int world_size);

// This rank's sample indices for `epoch`, an int64 tensor of samples_per_rank() elements.
at::Tensor sample_order(int64_t dataset_size, int rank, int world_size, bool shuffle, int64_t seed, int64_t epoch);

}  // namespace ddprun::engine
