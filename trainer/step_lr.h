// StepLR: the learning rate is the initial one times gamma^(epoch // step_size), stepped once per epoch, with the
// state_dict() layout of torch.optim.lr_scheduler.StepLR.
#pragma once

#include "checkpoint/value.h"

#include <cstdint>

namespace ddprun::trainer {

class StepLr {
 public:
  StepLr(double base_lr, int64_t step_size, double gamma);

  // Ends an epoch: advances last_epoch and returns the learning rate for the next one.
  double step();
  double lr() const { return last_lr_; }

  checkpoint::Value state_dict() const;
  void load_state_dict(const checkpoint::Value& state);

 private:
  double lr_at(int64_t epoch) const;

  double base_lr_;
  int64_t step_size_;
  double gamma_;
  int64_t last_epoch_ = 0;  // Python's constructor already took the first step: last_epoch 0, _step_count 1
  double last_lr_;
};

}  // namespace ddprun::trainer
