// TorchOptimizerRate: a torch::optim optimizer's one parameter group, as a schedule sees it.
#include "engine/learning_rate.h"

#include <stdexcept>
#include <string>

namespace ddprun::engine {
namespace {

torch::optim::OptimizerParamGroup& only_group(torch::optim::Optimizer& optimizer) {
  if (optimizer.param_groups().size() != 1)
    throw std::invalid_argument("LrScheduler: the optimizer has " + std::to_string(optimizer.param_groups().size()) +
                                " parameter groups; the schedules drive one");
  return optimizer.param_groups().front();
}

}  // namespace

TorchOptimizerRate::TorchOptimizerRate(torch::optim::Optimizer& optimizer) : optimizer_(optimizer) {
  only_group(optimizer);
}

double TorchOptimizerRate::lr() const { return only_group(optimizer_).options().get_lr(); }

void TorchOptimizerRate::set_lr(double lr) { only_group(optimizer_).options().set_lr(lr); }

}  // namespace ddprun::engine
