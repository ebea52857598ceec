// The learning-rate schedule torchvision's classification reference builds (--lr-scheduler steplr|cosineannealinglr,
// optionally after --lr-warmup-epochs of linear or constant warm-up through SequentialLR), stepped once per epoch.
// It computes what torch.optim.lr_scheduler computes, to the last bit, and writes and reads its state_dict() layout.
#pragma once

#include "checkpoint/value.h"
#include "engine/learning_rate.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ddprun::engine {

// The most epochs a run can have (--epochs is an int, and epoch + 1 must be one too): the range of every epoch count
// read from a checkpoint (the "epoch" entry, a schedule's last_epoch, milestones).
constexpr int64_t kMaxEpochs = INT32_MAX - 1;

struct LrScheduleOptions {      // torchvision's flags and defaults
  std::string name = "steplr";  // steplr or cosineannealinglr
  int epochs = 5;               // CosineAnnealingLR's T_max is epochs - warmup_epochs
  int step_size = 30;           // StepLR
  double gamma = 0.1;           // StepLR
  double lr_min = 0;            // CosineAnnealingLR's eta_min
  int warmup_epochs = 0;
  std::string warmup_method = "constant";  // linear (LinearLR) or constant (ConstantLR)
  double warmup_decay = 0.01;              // the warm-up's start_factor or factor
};

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  // Ends an epoch: sets the optimizer's learning rate for the next one, as Python's scheduler.step() does.
  virtual void step() = 0;
  // The learning rate the last step set (get_last_lr()).
  virtual double last_lr() const = 0;
  virtual checkpoint::Value state_dict() const = 0;
  // Takes Python's layout for the same schedule; throws std::runtime_error when it is another schedule's state.
  virtual void load_state_dict(const checkpoint::Value& state) = 0;
};

// Made the way torchvision's train.py makes it, on `optimizer` (which it changes as Python's constructors do: the
// first epoch's rate is set, initial_lr recorded). Throws std::invalid_argument for unknown names or bad values.
std::unique_ptr<LrSchedule> make_lr_schedule(LearningRate& optimizer, const LrScheduleOptions& options);

const std::vector<std::string>& known_lr_schedulers();
const std::vector<std::string>& known_warmup_methods();

}  // namespace ddprun::engine
