// ddprun::LrScheduler: the engine's schedules (Python's to the last bit) driving a torch::optim optimizer's rate.
#include "ddprun/lr_scheduler.h"

#include "ddprun/errors.h"
#include "engine/learning_rate.h"
#include "engine/lr_schedule.h"
#include "library/access.h"

#include <stdexcept>

namespace ddprun {

struct LrScheduler::Impl {
  std::unique_ptr<engine::TorchOptimizerRate> rate;
  std::unique_ptr<engine::LrSchedule> schedule;
};

LrScheduler::LrScheduler(torch::optim::Optimizer& optimizer, const LrSchedulerOptions& options)
    : impl_(std::make_unique<Impl>()) {
  engine::LrScheduleOptions schedule;
  schedule.name = options.name;
  schedule.epochs = options.epochs;
  schedule.step_size = options.step_size;
  schedule.gamma = options.gamma;
  schedule.lr_min = options.eta_min;
  schedule.warmup_epochs = options.warmup_epochs;
  schedule.warmup_method = options.warmup_method;
  schedule.warmup_decay = options.warmup_decay;
  try {
    impl_->rate = std::make_unique<engine::TorchOptimizerRate>(optimizer);
    impl_->schedule = engine::make_lr_schedule(*impl_->rate, schedule);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("LrScheduler: ") + e.what());
  }
}

LrScheduler::~LrScheduler() = default;

void LrScheduler::step() { impl_->schedule->step(); }
double LrScheduler::last_lr() const { return impl_->schedule->last_lr(); }
torch::optim::Optimizer& LrScheduler::optimizer() const { return impl_->rate->optimizer(); }
const std::vector<std::string>& LrScheduler::known_names() { return engine::known_lr_schedulers(); }
const std::vector<std::string>& LrScheduler::known_warmup_methods() { return engine::known_warmup_methods(); }

engine::LrSchedule& LibraryAccess::schedule(LrScheduler& scheduler) { return *scheduler.impl_->schedule; }
engine::LearningRate& LibraryAccess::rate(LrScheduler& scheduler) { return *scheduler.impl_->rate; }

}  // namespace ddprun
