// Stochastic gradient descent with momentum, dampening, Nesterov and weight decay, computing exactly what
// torch.optim.SGD computes, with its state_dict() layout so checkpoints move between Python and ddptrain.
#pragma once

#include "trainer/optimizer.h"

namespace ddprun::trainer {

struct SgdOptions {
  double lr = 0.01;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
};

class Sgd : public Optimizer {
 public:
  Sgd(std::vector<at::Tensor> params, SgdOptions options);

  void step() override;
  const SgdOptions& options() const { return options_; }

  // {"state": {index: {"momentum_buffer": tensor|None}}, "param_groups": [{"lr", "momentum", ..., "params"}]}
  checkpoint::Value state_dict() const override;
  void load_state_dict(const checkpoint::Value& state) override;

 private:
  std::vector<at::Tensor> momentum_buffers_;  // undefined until the first step that has a gradient
  std::vector<bool> stepped_;                 // whether Python would hold a state entry for the parameter
  SgdOptions options_;                        // its lr is the constructor's; lr() is the current rate
};

}  // namespace ddprun::trainer
