// Stochastic gradient descent with momentum, dampening, Nesterov and weight decay, computing exactly what
// torch.optim.SGD computes, with its state_dict() layout so checkpoints move between Python and ddptrain.
#pragma once

#include "checkpoint/value.h"

#include <ATen/core/Tensor.h>

#include <vector>

namespace ddprun::trainer {

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
};

class Sgd {
 public:
  Sgd(std::vector<at::Tensor> params, SgdOptions options);

  // One update from the parameters' .grad(); parameters without a gradient are skipped, as in PyTorch.
  void step();
  void zero_grad();

  double lr() const { return options_.lr; }
  void set_lr(double lr) { options_.lr = lr; }
  const SgdOptions& options() const { return options_; }

  // {"state": {index: {"momentum_buffer": tensor|None}}, "param_groups": [{"lr", "momentum", ..., "params"}]}
  checkpoint::Value state_dict() const;
  // Restores hyper-parameters and momentum buffers (moved to each parameter's device); throws std::runtime_error
  // when the state was saved for a different number or shape of parameters.
  void load_state_dict(const checkpoint::Value& state);

 private:
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> momentum_buffers_;  // undefined until the first step that has a gradient
  std::vector<bool> stepped_;                 // whether Python would hold a state entry for the parameter
  SgdOptions options_;
  double initial_lr_;  // the rate the schedule started from (param_groups[0]["initial_lr"] in Python)
};

}  // namespace ddprun::trainer
