// What a learning-rate schedule drives: the rate of an optimizer's parameter group, and the initial_lr Python's
// schedulers record in it. TorchOptimizerRate is that rate for a torch::optim optimizer (its one parameter group).
// Also the ranges an optimizer's numbers can have, for flags and for states read from files.
#pragma once

#include "ddprun/lr_scheduler.h"

#include <torch/optim/optimizer.h>

#include <cstdint>
#include <optional>

namespace ddprun::engine {

// What the numbers mean: kMaxLearningRate (ddprun/lr_scheduler.h) for rates, weight decays and gammas; a step count
// past 2^53 is not exact in the float Python keeps it in.
using ddprun::kMaxLearningRate;
constexpr int64_t kMaxStepCount = int64_t{1} << 53;

class LearningRate {
 public:
  virtual ~LearningRate() = default;
  virtual double lr() const = 0;
  virtual void set_lr(double lr) = 0;
  // param_groups[0]["initial_lr"]: set by the first schedule made for this rate (as Python's constructors do).
  std::optional<double> initial_lr() const { return initial_lr_; }
  void set_initial_lr(double lr) { initial_lr_ = lr; }

 private:
  std::optional<double> initial_lr_;
};

// The rate of a torch::optim optimizer with one parameter group (std::invalid_argument for more).
class TorchOptimizerRate final : public LearningRate {
 public:
  explicit TorchOptimizerRate(torch::optim::Optimizer& optimizer);
  double lr() const override;
  void set_lr(double lr) override;
  torch::optim::Optimizer& optimizer() const { return optimizer_; }

 private:
  torch::optim::Optimizer& optimizer_;
};

}  // namespace ddprun::engine
