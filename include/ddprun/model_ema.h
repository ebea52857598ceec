// An exponential moving average of a model's weights, as torchvision's ExponentialMovingAverage (its classification
// reference's utils.py) over torch.optim.swa_utils.AveragedModel(use_buffers=True): the same update, the same
// n_averaged counter, and the same state-dict names ("n_averaged", "module.<name>"), so that a checkpoint's
// "model_ema" moves between Python and C++ (TrainingState::module("model_ema", ema)).
//   auto ema = std::make_shared<ddprun::ExponentialMovingAverage>(*net, std::make_shared<Net>(), 0.999);
//   ... after optimizer.step(), every K steps: ema->update_parameters(*net);
//   evaluate(ema->module_as<Net>());
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>

namespace ddprun {

class ExponentialMovingAverage : public torch::nn::Module {
 public:
  // `average`: a second instance of the model's class, built as the model was (LibTorch has no deepcopy); it takes
  // the model's parameters and buffers now, as Python's deepcopy does, and keeps its own device. Throws UsageError
  // when its parameters or buffers differ from the model's in number, name or shape, or when it is the model itself.
  ExponentialMovingAverage(const torch::nn::Module& model, std::shared_ptr<torch::nn::Module> average, double decay);

  // average = decay * average + (1 - decay) * model, over parameters and buffers (BatchNorm statistics included,
  // integer counters truncated as in Python); the first update after n_averaged is 0 copies the model.
  void update_parameters(const torch::nn::Module& model);

  at::Tensor& n_averaged() { return n_averaged_; }  // torchvision zeroes it during the learning-rate warm-up
  double decay() const { return decay_; }
  torch::nn::Module& module() { return *average_; }
  template <typename Net>
  std::shared_ptr<Net> module_as() const {
    return std::dynamic_pointer_cast<Net>(average_);
  }

 private:
  void check_same_layout(const torch::nn::Module& model, const char* call) const;

  std::shared_ptr<torch::nn::Module> average_;
  at::Tensor n_averaged_;
  double decay_;
};

}  // namespace ddprun
