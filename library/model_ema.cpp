// The exponential moving average of a model (include/ddprun/model_ema.h): AveragedModel.update_parameters with
// torchvision's ema_avg, op for op.
#include "ddprun/model_ema.h"

#include "ddprun/errors.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/StringUtil.h>

#include <cmath>
#include <string>
#include <vector>

namespace ddprun {
namespace {

// Parameters then buffers, in registration order: Python's itertools.chain(parameters(), buffers()).
std::vector<std::pair<std::string, at::Tensor>> weights_and_buffers(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> all;
  for (const auto& item : module.named_parameters()) all.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers()) all.emplace_back(item.key(), item.value());
  return all;
}

}  // namespace

ExponentialMovingAverage::ExponentialMovingAverage(const torch::nn::Module& model,
                                                   std::shared_ptr<torch::nn::Module> average, double decay)
    : average_(std::move(average)), decay_(decay) {
  if (!average_) throw UsageError("ExponentialMovingAverage: the average is a null module; pass a second instance");
  if (average_.get() == &model)
    throw UsageError(
        "ExponentialMovingAverage: the average must be a second instance of the model's class, not the model "
        "itself (LibTorch has no deepcopy: build one more, e.g. std::make_shared<Net>())");
  if (!std::isfinite(decay) || decay < 0 || decay > 1)
    throw UsageError("ExponentialMovingAverage: decay " + std::to_string(decay) + " must be in [0, 1]");
  check_same_layout(model, "ExponentialMovingAverage");
  n_averaged_ = register_buffer("n_averaged", at::scalar_tensor(0, at::kLong));
  register_module("module", average_);
  // An average is not trained: no gradients (and no "not wrapped in DistributedDataParallel" warning at saves).
  for (at::Tensor& p : average_->parameters()) p.requires_grad_(false);
  at::NoGradGuard no_grad;  // Python's deepcopy: the average starts as the model is now
  const auto from = weights_and_buffers(model);
  const auto to = weights_and_buffers(*average_);
  for (size_t i = 0; i < from.size(); ++i) to[i].second.copy_(from[i].second);
}

void ExponentialMovingAverage::check_same_layout(const torch::nn::Module& model, const char* call) const {
  const auto mine = weights_and_buffers(*average_);
  const auto theirs = weights_and_buffers(model);
  if (mine.size() != theirs.size())
    throw UsageError(std::string(call) + ": the model has " + std::to_string(theirs.size()) +
                     " parameters and buffers, the average " + std::to_string(mine.size()) +
                     "; pass an instance of the same class, built with the same arguments");
  for (size_t i = 0; i < mine.size(); ++i)
    if (mine[i].first != theirs[i].first || !mine[i].second.sizes().equals(theirs[i].second.sizes()) ||
        mine[i].second.scalar_type() != theirs[i].second.scalar_type())
      throw UsageError(std::string(call) + ": the model's '" + theirs[i].first + "' " +
                       c10::str(theirs[i].second.scalar_type(), theirs[i].second.sizes()) +
                       " does not match the average's '" + mine[i].first + "' " +
                       c10::str(mine[i].second.scalar_type(), mine[i].second.sizes()) +
                       "; pass an instance of the same class, built with the same arguments");
}

void ExponentialMovingAverage::update_parameters(const torch::nn::Module& model) {
  if (&model == average_.get() || &model == this)
    throw UsageError("ExponentialMovingAverage::update_parameters(): pass the trained model, not the average");
  check_same_layout(model, "ExponentialMovingAverage::update_parameters()");
  at::NoGradGuard no_grad;
  const auto mine = weights_and_buffers(*average_);
  const auto theirs = weights_and_buffers(model);
  const bool first = n_averaged_.item<int64_t>() == 0;
  for (size_t i = 0; i < mine.size(); ++i) {
    at::Tensor avg = mine[i].second;
    const at::Tensor p = theirs[i].second.detach().to(avg.device());
    if (first)
      avg.copy_(p);
    else  // torchvision's ema_avg: decay * avg_model_param + (1 - decay) * model_param
      avg.copy_(avg.mul(decay_).add(p.mul(1.0 - decay_)));
  }
  n_averaged_.add_(1);
}

}  // namespace ddprun
