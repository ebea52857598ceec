// ddprun::LrScheduler: the trainer's schedules (Python's to the last bit) driving a torch::optim optimizer's rate
// through a stand-in trainer::Optimizer that passes every rate it is given on to the parameter group.
#include "ddprun/lr_scheduler.h"

#include "library/optimizer_state.h"
#include "trainer/lr_scheduler.h"
#include "trainer/optimizer.h"

#include <stdexcept>

namespace ddprun {
namespace {

class TorchOptimizerRate final : public trainer::Optimizer {
 public:
  explicit TorchOptimizerRate(torch::optim::Optimizer& optimizer)
      : trainer::Optimizer({}, first_group(optimizer).options().get_lr()), optimizer_(optimizer) {}

  void set_lr(double lr) override {
    trainer::Optimizer::set_lr(lr);
    first_group(optimizer_).options().set_lr(lr);
  }
  void step() override { optimizer_.step(); }
  checkpoint::Value state_dict() const override { return library::optimizer_state_dict(optimizer_, initial_lr()); }
  void load_state_dict(const checkpoint::Value& state) override {
    const std::optional<double> initial = library::load_optimizer_state_dict(optimizer_, state);
    trainer::Optimizer::set_lr(first_group(optimizer_).options().get_lr());
    if (initial) set_initial_lr(*initial);
  }

 private:
  static torch::optim::OptimizerParamGroup& first_group(torch::optim::Optimizer& optimizer) {
    if (optimizer.param_groups().size() != 1)
      throw std::invalid_argument("LrScheduler: the optimizer has " + std::to_string(optimizer.param_groups().size()) +
                                  " parameter groups; the schedules drive one");
    return optimizer.param_groups().front();
  }
  torch::optim::Optimizer& optimizer_;
};

}  // namespace

LrScheduler::LrScheduler(torch::optim::Optimizer& optimizer, const LrSchedulerOptions& options)
    : rate_(std::make_unique<TorchOptimizerRate>(optimizer)) {
  trainer::LrScheduleOptions schedule;
  schedule.name = options.name;
  schedule.epochs = options.epochs;
  schedule.step_size = options.step_size;
  schedule.gamma = options.gamma;
  schedule.lr_min = options.eta_min;
  schedule.warmup_epochs = options.warmup_epochs;
  schedule.warmup_method = options.warmup_method;
  schedule.warmup_decay = options.warmup_decay;
  schedule_ = trainer::make_lr_schedule(*rate_, schedule);
}

LrScheduler::~LrScheduler() = default;

void LrScheduler::step() { schedule_->step(); }
double LrScheduler::last_lr() const { return schedule_->last_lr(); }
trainer::LrSchedule& LrScheduler::schedule() { return *schedule_; }
trainer::Optimizer& LrScheduler::rate() { return *rate_; }

}  // namespace ddprun
