// The optimizer interface ddptrain trains with (--opt sgd|sgd_nesterov|adamw): one parameter group, an update from
// the parameters' .grad(), and torch.optim's state_dict() layout so that checkpoints move between Python and C++.
#pragma once

#include "checkpoint/value.h"

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ddprun::trainer {

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // One update from the parameters' .grad(); parameters without a gradient are skipped, as in PyTorch.
  virtual void step() = 0;
  // Zeros the gradients in place, so tensors that alias them (DDP's bucket views) stay the gradients.
  void zero_grad();

  double lr() const { return lr_; }
  virtual void set_lr(double lr) { lr_ = lr; }
  // param_groups[0]["initial_lr"]: set by the first learning-rate scheduler made for this optimizer.
  std::optional<double> initial_lr() const { return initial_lr_; }
  void set_initial_lr(double lr) { initial_lr_ = lr; }

  // {"state": {index: {...}}, "param_groups": [{hyper-parameters..., "params": [0, 1, ...]}]}, as Python writes it.
  virtual checkpoint::Value state_dict() const = 0;
  // Restores hyper-parameters and per-parameter state (moved to each parameter's device); throws std::runtime_error
  // naming what does not fit: another optimizer's state, another number or shape of parameters.
  virtual void load_state_dict(const checkpoint::Value& state) = 0;

 protected:
  Optimizer(std::vector<at::Tensor> params, double lr) : params_(std::move(params)), lr_(lr) {}

  // The one parameter group of `state`, checked to be for this many parameters and to have `marker` (a key only
  // this optimizer's groups have).
  const checkpoint::Value& load_group(const checkpoint::Value& state, const char* optimizer_name, const char* marker);
  // The per-parameter state entries of `state`, with their indices checked.
  std::vector<std::pair<size_t, const checkpoint::Value*>> load_entries(const checkpoint::Value& state) const;
  // `saved`, checked to have parameter i's shape, as a fresh tensor on its device and dtype.
  at::Tensor restore_like(size_t i, const at::Tensor& saved, const char* what) const;
  // lr and initial_lr from a loaded group (last, once everything else was checked).
  void restore_lr(const checkpoint::Value& group);
  // {"state": state, "param_groups": [group + initial_lr (once a scheduler set it) + params]}.
  checkpoint::Value pack_state_dict(checkpoint::Value state, checkpoint::Value group) const;

  std::vector<at::Tensor> params_;
  double lr_;
  std::optional<double> initial_lr_;
};

// The ranges an optimizer's numbers can have, for flags and for states read from files (what they mean: a larger
// learning rate diverges at the first step, a step count past 2^53 is not exact in the float Python keeps it in).
constexpr double kMaxLearningRate = 1000;  // also the most weight decay and StepLR gamma
constexpr int64_t kMaxStepCount = int64_t{1} << 53;

struct OptimizerOptions {
  std::string name = "sgd";  // sgd, sgd_nesterov or adamw (torchvision's --opt)
  double lr = 0.05;
  double momentum = 0.9;  // SGD only
  double weight_decay = 1e-4;
};

// The optimizer torchvision's reference makes for --opt: SGD(lr, momentum, weight_decay, nesterov) or
// AdamW(lr, weight_decay) with PyTorch's default betas and eps. Throws std::invalid_argument for other names.
std::unique_ptr<Optimizer> make_optimizer(std::vector<at::Tensor> params, const OptimizerOptions& options);

// The names make_optimizer accepts.
const std::vector<std::string>& known_optimizers();

}  // namespace ddprun::trainer
