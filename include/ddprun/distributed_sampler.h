// Which samples each rank sees, with the semantics of PyTorch's torch.utils.data.DistributedSampler (drop_last=False):
// a permutation seeded by seed + epoch (the same on every rank), padded by wrapping around so that every rank gets the
// same number of samples, then every world_size-th index starting at the rank; the same order, index for index.
//
// It is a torch::data sampler: give it to torch::data::make_data_loader (a copy is fine: copies share their state, so
// set_epoch on yours reaches the loader's), call set_epoch before each epoch, and to continue mid-epoch start the
// epoch at a batch: the skipped batches are never loaded.
//   ddprun::DistributedSampler sampler(dataset.size().value(), group);
//   auto loader = torch::data::make_data_loader(dataset, sampler, torch::data::DataLoaderOptions(64));
//   for (epoch...) { sampler.set_epoch(epoch, epoch == start.epoch ? start.step : 0); for (auto& batch : *loader) ... }
#pragma once

#include "ddprun/process_group.h"

#include <ATen/core/Tensor.h>
#include <torch/data/samplers/base.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace ddprun {

class DistributedSampler : public torch::data::samplers::Sampler<> {
 public:
  DistributedSampler(int64_t dataset_size, int rank, int world_size, bool shuffle = true, int64_t seed = 0);
  DistributedSampler(int64_t dataset_size, const ProcessGroup& group, bool shuffle = true, int64_t seed = 0);

  // Selects the epoch whose order the next pass uses (as DistributedSampler.set_epoch does), starting at batch
  // `first_batch` of it (a checkpoint's ResumePoint::step), in batches of the size the loader asks for.
  void set_epoch(int64_t epoch, int64_t first_batch = 0);
  // This rank's sample indices for the current epoch (all of them), as an int64 tensor of num_samples() elements.
  at::Tensor indices() const;
  // Samples per rank: ceil(dataset_size / world_size).
  int64_t num_samples() const;
  int64_t dataset_size() const;
  int64_t epoch() const;
  int64_t seed() const;
  bool shuffle() const;

  // torch::data::samplers::Sampler: reset() starts the pass (the data loader calls it), next() hands out the next
  // batch of indices.
  void reset(torch::optional<size_t> new_size = torch::nullopt) override;
  torch::optional<std::vector<size_t>> next(size_t batch_size) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared by copies
};

}  // namespace ddprun
