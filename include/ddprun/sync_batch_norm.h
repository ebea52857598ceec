// Batch normalization over the whole job, as Python's torch.nn.SyncBatchNorm: in training, each channel's mean and
// variance are those of the global batch (every rank's samples), forward and backward, so that 2 ranks x batch B
// normalize as 1 rank x batch 2B; in eval mode, or on one rank, it is torch::nn::BatchNorm (the same arithmetic, bit
// for bit). Parameters and buffers have BatchNorm's names (weight, bias, running_mean, running_var,
// num_batches_tracked), so checkpoints move to and from Python's BatchNorm2d/SyncBatchNorm.
//
// C++ cannot swap a layer a model holds in a member (LibTorch has no deepcopy, and forward() calls its members), so
// a model that may run synchronized declares these layers as ddprun::SyncBatchNorm: they act as BatchNorm until
// convert_sync_batchnorm(model, group) gives them the group (torchvision's --sync-bn).
//   bn1 = register_module("bn1", ddprun::SyncBatchNorm(torch::nn::BatchNormOptions(64)));
//   ...
//   ddprun::convert_sync_batchnorm(*net, group);   // before wrapping it in DistributedDataParallel
#pragma once

#include "ddprun/process_group.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/options/batchnorm.h>
#include <torch/nn/pimpl.h>

namespace ddprun {

class SyncBatchNormImpl : public torch::nn::Cloneable<SyncBatchNormImpl> {
 public:
  explicit SyncBatchNormImpl(int64_t num_features) : SyncBatchNormImpl(torch::nn::BatchNormOptions(num_features)) {}
  explicit SyncBatchNormImpl(const torch::nn::BatchNormOptions& options);

  void reset() override;
  // [N, C, ...]: any number of dimensions from 2, as Python's SyncBatchNorm (BatchNorm1d, 2d and 3d inputs).
  at::Tensor forward(const at::Tensor& input);

  // Synchronize over `group` in training mode (convert_sync_batchnorm sets it); nullptr: plain BatchNorm.
  void set_process_group(ProcessGroup* group) { group_ = group; }
  bool synchronized() const { return group_ != nullptr && group_->world_size() > 1; }

  torch::nn::BatchNormOptions options;
  at::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  ProcessGroup* group_ = nullptr;
};

TORCH_MODULE(SyncBatchNorm);

// Gives `group` to every SyncBatchNorm layer in `model` (itself included) and returns how many there are. Throws
// UsageError naming the first torch::nn::BatchNorm1d/2d/3d layer it finds (it would normalize each rank's samples
// alone, silently: declare it as ddprun::SyncBatchNorm), and when the model has no SyncBatchNorm layer at all.
int convert_sync_batchnorm(torch::nn::Module& model, ProcessGroup& group);

}  // namespace ddprun
