// Learning-rate schedules for a torch::optim optimizer as torchvision's train.py builds them (StepLR or
// CosineAnnealingLR, optionally after a linear or constant warm-up through SequentialLR), stepped once per epoch.
// With torch::optim's SGD or AdamW they compute what Python's torch.optim and torch.optim.lr_scheduler compute, to
// the last bit, and their state_dict is Python's (LibTorch's own StepLR has none to save).
#pragma once

#include <torch/optim/optimizer.h>

#include <memory>
#include <string>
#include <vector>

namespace ddprun {

// The largest learning rate (and weight decay, and StepLR gamma) the schedules and checkpoints accept: a larger one
// diverges at the first step whatever the model.
constexpr double kMaxLearningRate = 1000;

struct LrSchedulerOptions {
  std::string name = "steplr";  // "steplr" or "cosineannealinglr"
  int epochs = 90;              // all epochs: CosineAnnealingLR's T_max is epochs - warmup_epochs
  int step_size = 30;           // StepLR: multiply by gamma every step_size epochs
  double gamma = 0.1;
  double eta_min = 0;  // CosineAnnealingLR's last rate
  int warmup_epochs = 0;
  std::string warmup_method = "linear";  // "linear" (LinearLR) or "constant" (ConstantLR)
  double warmup_decay = 0.01;            // the warm-up's start factor
};

class LrScheduler {
 public:
  // Sets the first epoch's rate on `optimizer` (one parameter group), as Python's constructors do. Throws
  // UsageError (errors.h) for unknown names or values.
  LrScheduler(torch::optim::Optimizer& optimizer, const LrSchedulerOptions& options);
  ~LrScheduler();
  LrScheduler(const LrScheduler&) = delete;
  LrScheduler& operator=(const LrScheduler&) = delete;

  void step();             // at the end of each epoch
  double last_lr() const;  // the rate the last step set
  torch::optim::Optimizer& optimizer() const;

  static const std::vector<std::string>& known_names();           // "steplr", "cosineannealinglr"
  static const std::vector<std::string>& known_warmup_methods();  // "linear", "constant"

 private:
  struct Impl;
  friend struct LibraryAccess;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ddprun
