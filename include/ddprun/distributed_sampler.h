// Which samples each rank sees, with the semantics of PyTorch's torch.utils.data.DistributedSampler: a permutation
// seeded by seed + epoch (the same on every rank), padded by wrapping around so that every rank gets the same number
// of samples, then every world_size-th index starting at the rank.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ddprun {

class DistributedSampler {
 public:
  DistributedSampler(int64_t dataset_size, int rank, int world_size, bool shuffle, int64_t seed);

  // Selects the epoch whose permutation indices() returns (as DistributedSampler.set_epoch does).
  void set_epoch(int64_t epoch) { epoch_ = epoch; }
  // This rank's sample indices for the current epoch, as an int64 tensor of num_samples() elements.
  at::Tensor indices() const;
  // Samples per rank: ceil(dataset_size / world_size).
  int64_t num_samples() const { return num_samples_; }

 private:
  int64_t dataset_size_;
  int rank_;
  int world_size_;
  bool shuffle_;
  int64_t seed_;
  int64_t epoch_ = 0;
  int64_t num_samples_;
};

}  // namespace ddprun
