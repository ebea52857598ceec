// SyncBatchNorm (include/ddprun/sync_batch_norm.h): torch::nn::BatchNorm's forward when alone or in eval mode;
// in training on several ranks, the global batch statistics from one all-reduce of per-channel sums (in float64),
// and in backward Python's sync_batch_norm gradient with one all-reduce of sum(dy) and sum(dy * (x - mean)).
#include "ddprun/sync_batch_norm.h"

#include "ddprun/errors.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/functional/batchnorm.h>
#include <torch/nn/modules/batchnorm.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace ddprun {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// [1, C, 1, ...] for broadcasting a per-channel vector against an input of `dims` dimensions.
std::vector<int64_t> channel_shape(int64_t channels, int64_t dims) {
  std::vector<int64_t> shape(static_cast<size_t>(dims), 1);
  shape[1] = channels;
  return shape;
}

// Every dimension but the channels'.
std::vector<int64_t> reduced_dims(int64_t dims) {
  std::vector<int64_t> out{0};
  for (int64_t d = 2; d < dims; ++d) out.push_back(d);
  return out;
}

// y = (x - mean) * invstd * weight + bias with the global mean and invstd (no gradient: constants of the forward);
// backward: Python's batch_norm_backward_reduce, all_reduce(sum_dy, sum_dy_xmu), batch_norm_backward_elemt.
struct SyncBatchNormFunction : torch::autograd::Function<SyncBatchNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd, int64_t count,
                            int64_t group_address) {
    ctx->save_for_backward({input, weight, mean, invstd});
    ctx->saved_data["count"] = count;
    ctx->saved_data["group"] = group_address;
    const auto shape = channel_shape(input.size(1), input.dim());
    at::Tensor out = (input - mean.view(shape)) * invstd.view(shape);
    if (weight.defined()) out = out * weight.view(shape) + bias.view(shape);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &mean = saved[2], &invstd = saved[3];
    const at::Tensor dy = grad_outputs[0].contiguous();
    const int64_t channels = input.size(1);
    const auto shape = channel_shape(channels, input.dim());
    const auto dims = reduced_dims(input.dim());
    const at::Tensor xmu = input - mean.view(shape);
    at::Tensor sum_dy = dy.sum(dims);
    at::Tensor sum_dy_xmu = (dy * xmu).sum(dims);
    at::Tensor grad_weight, grad_bias, grad_input;
    if (weight.defined()) {  // this rank's share; DistributedDataParallel averages them as every gradient
      grad_weight = sum_dy_xmu * invstd;
      grad_bias = sum_dy.clone();
    }
    if (ctx->needs_input_grad(0)) {  // the same on every rank: the graph is the same
      auto* group = reinterpret_cast<ProcessGroup*>(ctx->saved_data["group"].toInt());
      at::Tensor both = at::cat({sum_dy, sum_dy_xmu});
      group->all_reduce(both, ReduceOp::Sum);
      const double count = static_cast<double>(ctx->saved_data["count"].toInt());
      const at::Tensor mean_dy = both.narrow(0, 0, channels) / count;
      const at::Tensor mean_dy_xmu = both.narrow(0, channels, channels) / count;
      const at::Tensor scale = weight.defined() ? invstd * weight : invstd;
      grad_input = (dy - mean_dy.view(shape) - xmu * (invstd * invstd * mean_dy_xmu).view(shape)) * scale.view(shape);
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

SyncBatchNormImpl::SyncBatchNormImpl(const torch::nn::BatchNormOptions& options_) : options(options_) { reset(); }

void SyncBatchNormImpl::reset() {  // torch::nn::BatchNorm's parameters and buffers, in its order
  if (options.affine()) {
    weight = register_parameter("weight", at::ones({options.num_features()}));
    bias = register_parameter("bias", at::zeros({options.num_features()}));
  } else {
    weight = register_parameter("weight", at::Tensor(), /*requires_grad=*/false);
    bias = register_parameter("bias", at::Tensor(), /*requires_grad=*/false);
  }
  if (options.track_running_stats()) {
    running_mean = register_buffer("running_mean", at::zeros({options.num_features()}));
    running_var = register_buffer("running_var", at::ones({options.num_features()}));
    num_batches_tracked = register_buffer("num_batches_tracked", at::zeros({}, at::kLong));
  } else {
    running_mean = register_buffer("running_mean", at::Tensor());
    running_var = register_buffer("running_var", at::Tensor());
    num_batches_tracked = register_buffer("num_batches_tracked", at::Tensor());
  }
}

at::Tensor SyncBatchNormImpl::forward(const at::Tensor& input) {
  if (input.dim() < 2)
    throw UsageError("SyncBatchNorm: expected an input of at least 2 dimensions [N, C, ...], got " +
                     std::to_string(input.dim()));
  if (input.size(1) != options.num_features())
    throw UsageError("SyncBatchNorm: the input has " + std::to_string(input.size(1)) + " channels, the layer " +
                     std::to_string(options.num_features()));
  // torch::nn::BatchNorm's momentum and counter, step for step.
  double factor = options.momentum() ? *options.momentum() : 0.0;
  if (is_training() && options.track_running_stats() && num_batches_tracked.defined()) {
    num_batches_tracked += 1;
    if (!options.momentum()) factor = 1.0 / num_batches_tracked.item<double>();
  }
  if (!is_training() || !synchronized())
    return torch::nn::functional::detail::batch_norm(input, running_mean, running_var, weight, bias,
                                                     is_training() || !options.track_running_stats(), factor,
                                                     options.eps());

  // The global batch's per-channel sums, in float64: [sum x, sum x^2, samples] over every rank.
  const int64_t channels = input.size(1);
  const auto dims = reduced_dims(input.dim());
  const at::Tensor x =
      weight.defined() && input.scalar_type() != weight.scalar_type() ? input.to(weight.dtype()) : input;
  at::Tensor stats;
  {
    at::NoGradGuard no_grad;
    const at::Tensor detached = x.detach();
    stats = at::cat({detached.sum(dims, false, at::kDouble), detached.square().sum(dims, false, at::kDouble),
                     at::full({1}, static_cast<double>(x.numel() / std::max<int64_t>(channels, 1)), at::kDouble)});
  }
  group_->all_reduce(stats, ReduceOp::Sum);
  const double count = stats[2 * channels].item<double>();
  if (count < 2)
    throw UsageError("SyncBatchNorm: the global batch has " + std::to_string(static_cast<int64_t>(count)) +
                     " value(s) per channel; training needs at least 2");
  const at::Tensor mean_d = stats.narrow(0, 0, channels) / count;
  const at::Tensor var_d = (stats.narrow(0, channels, channels) / count - mean_d * mean_d).clamp_min(0);
  const at::Tensor mean = mean_d.to(x.scalar_type());
  const at::Tensor invstd = at::rsqrt(var_d + options.eps()).to(x.scalar_type());
  if (options.track_running_stats() && running_mean.defined()) {  // the unbiased variance, as Python's
    at::NoGradGuard no_grad;
    running_mean.mul_(1 - factor).add_(mean_d.to(running_mean.dtype()), factor);
    running_var.mul_(1 - factor).add_((var_d * (count / (count - 1))).to(running_var.dtype()), factor);
  }
  return SyncBatchNormFunction::apply(x, weight, bias, mean, invstd, static_cast<int64_t>(count),
                                      reinterpret_cast<int64_t>(group_));
}

int convert_sync_batchnorm(torch::nn::Module& model, ProcessGroup& group) {
  int converted = 0;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    torch::nn::Module& m = *item.value();
    if (auto* sync = dynamic_cast<SyncBatchNormImpl*>(&m)) {
      sync->set_process_group(&group);
      ++converted;
    } else if (dynamic_cast<torch::nn::BatchNorm1dImpl*>(&m) || dynamic_cast<torch::nn::BatchNorm2dImpl*>(&m) ||
               dynamic_cast<torch::nn::BatchNorm3dImpl*>(&m)) {
      throw UsageError("convert_sync_batchnorm: '" + item.key() + "' is a " + m.name() +
                       ", which C++ cannot swap for a synchronized one (the model's forward calls it directly); "
                       "declare it as ddprun::SyncBatchNorm");
    }
  }
  if (converted == 0)
    throw UsageError("convert_sync_batchnorm: the model has no ddprun::SyncBatchNorm layer to synchronize");
  return converted;
}

}  // namespace ddprun
