// AdamW (decoupled weight decay), computing exactly what torch.optim.AdamW computes on the CPU path, with its
// state_dict() layout so checkpoints move between Python and ddptrain.
#pragma once

#include "trainer/optimizer.h"

namespace ddprun::trainer {

struct AdamWOptions {  // torch.optim.AdamW's defaults
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<at::Tensor> params, AdamWOptions options);

  void step() override;
  const AdamWOptions& options() const { return options_; }

  // {"state": {index: {"step": float32 tensor, "exp_avg", "exp_avg_sq"[, "max_exp_avg_sq"]}},
  //  "param_groups": [{"lr", "betas": (b1, b2), "eps", "weight_decay", "amsgrad", ..., "params"}]}
  checkpoint::Value state_dict() const override;
  void load_state_dict(const checkpoint::Value& state) override;

 private:
  struct State {
    at::Tensor step;  // a 0-dim float32 CPU tensor, as Python keeps it
    at::Tensor exp_avg, exp_avg_sq, max_exp_avg_sq;
  };
  std::vector<State> state_;  // step undefined until the parameter's first update
  AdamWOptions options_;      // its lr is the constructor's; lr() is the current rate
};

}  // namespace ddprun::trainer
