// torch.optim.lr_scheduler's StepLR, CosineAnnealingLR, LinearLR, ConstantLR and SequentialLR (PyTorch 1.13): the
// same recurrences evaluated in the same order (so the rates agree to the last bit), the same effects on the
// optimizer's learning rate, and their state dicts.
#include "engine/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace ddprun::engine {
namespace {

using checkpoint::Items;
using checkpoint::Value;
constexpr double kPi = 3.141592653589793;  // math.pi

// _LRScheduler: one parameter group; get_lr() is the chainable form (from the optimizer's current rate),
// closed_form_lr() what step(epoch) uses.
class Scheduler : public LrSchedule {
 public:
  void step() override {
    ++step_count_;
    ++last_epoch_;
    set_lr(get_lr());
  }
  // step(epoch), which SequentialLR uses as step(0) when it hands over to the next schedule.
  void step_to(int64_t epoch) {
    ++step_count_;
    last_epoch_ = epoch;
    set_lr(closed_form_lr());
  }
  void initial_step() {
    step_count_ = 0;
    step();
  }
  void undo_epoch() { --last_epoch_; }
  double last_lr() const override { return last_lr_; }

  Value state_dict() const override {
    Value state = Value::dict(own_state());
    state.set("base_lrs", Value::list({base_lr_}));
    state.set("last_epoch", last_epoch_);
    state.set("verbose", false);
    state.set("_step_count", step_count_);
    state.set("_get_lr_called_within_step", false);
    state.set("_last_lr", Value::list({last_lr_}));
    return state;
  }

  void load_state_dict(const Value& state) override {
    if (state.find("_schedulers"))
      throw std::runtime_error(std::string("lr_scheduler state is a SequentialLR's (a warm-up, then the main "
                                           "schedule), this run's is a ") +
                               python_name_ + "; resume with the warm-up it was saved with");
    for (const auto& entry : own_state()) {
      if (!state.find(entry.first.to_string()))
        throw std::runtime_error(std::string("lr_scheduler state is not a ") + python_name_ + "'s (it has no '" +
                                 entry.first.to_string() + "'); resume with the schedule it was saved with");
    }
    const auto& base_lrs = state.at("base_lrs").items();
    const auto& last_lrs = state.at("_last_lr").items();
    if (base_lrs.size() != 1 || last_lrs.size() != 1)
      throw std::runtime_error("lr_scheduler state has " + std::to_string(base_lrs.size()) +
                               " base learning rates; ddptrain uses one parameter group");
    // Everything read before anything changes, so that a bad state leaves the schedule as it was.
    const double base_lr = base_lrs[0].to_double_in(0, kMaxLearningRate, "lr_scheduler state's base_lrs[0]");
    const double last_lr = last_lrs[0].to_double_in(0, kMaxLearningRate, "lr_scheduler state's _last_lr[0]");
    const int64_t last_epoch = state.at("last_epoch").to_int_in(-1, kMaxEpochs, "lr_scheduler state's last_epoch");
    const int64_t step_count = state.at("_step_count").to_int_in(0, kMaxEpochs + 1, "lr_scheduler state's _step_count");
    load_own(state);
    base_lr_ = base_lr;
    last_epoch_ = last_epoch;
    step_count_ = step_count;
    last_lr_ = last_lr;
  }

 protected:
  Scheduler(LearningRate& optimizer, const char* python_name) : optimizer_(optimizer), python_name_(python_name) {}

  // The base class constructor's work, run last by each derived constructor once its fields are set.
  void attach() {
    if (!optimizer_.initial_lr()) optimizer_.set_initial_lr(optimizer_.lr());
    base_lr_ = *optimizer_.initial_lr();
    last_epoch_ = -1;
    initial_step();
  }

  virtual double get_lr() const = 0;
  virtual double closed_form_lr() const = 0;
  // The schedule's own fields, first in its state dict, as Python's __dict__ holds them; load_own reads all of them
  // before it changes any.
  virtual Items own_state() const = 0;
  virtual void load_own(const Value& state) = 0;

  double group_lr() const { return optimizer_.lr(); }

  double base_lr_ = 0;
  int64_t last_epoch_ = -1;
  int64_t step_count_ = 0;

 private:
  void set_lr(double lr) {
    optimizer_.set_lr(lr);
    last_lr_ = lr;
  }

  LearningRate& optimizer_;
  const char* python_name_;
  double last_lr_ = 0;
};

class StepLr : public Scheduler {
 public:
  StepLr(LearningRate& optimizer, int64_t step_size, double gamma)
      : Scheduler(optimizer, "StepLR"), step_size_(step_size), gamma_(gamma) {
    if (step_size < 1) throw std::invalid_argument("StepLR: the step size must be at least 1");
    attach();
  }

 private:
  double get_lr() const override {
    if (last_epoch_ == 0 || last_epoch_ % step_size_ != 0) return group_lr();
    return group_lr() * gamma_;
  }
  double closed_form_lr() const override {
    return base_lr_ * std::pow(gamma_, static_cast<double>(floor_div(last_epoch_, step_size_)));
  }
  static int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
  Items own_state() const override { return {{"step_size", step_size_}, {"gamma", gamma_}}; }
  void load_own(const Value& state) override {
    const int64_t step_size = state.at("step_size").to_int_in(1, kMaxEpochs, "lr_scheduler state's step_size");
    const double gamma = state.at("gamma").to_double_in(0, kMaxLearningRate, "lr_scheduler state's gamma");
    step_size_ = step_size;
    gamma_ = gamma;
  }

  int64_t step_size_;
  double gamma_;
};

class CosineAnnealingLr : public Scheduler {
 public:
  CosineAnnealingLr(LearningRate& optimizer, int64_t t_max, double eta_min)
      : Scheduler(optimizer, "CosineAnnealingLR"), t_max_(t_max), eta_min_(eta_min) {
    if (t_max < 1)
      throw std::invalid_argument("CosineAnnealingLR: T_max (epochs after the warm-up) must be at least 1");
    attach();
  }

 private:
  double get_lr() const override {
    const double t_max = static_cast<double>(t_max_), epoch = static_cast<double>(last_epoch_);
    if (last_epoch_ == 0) return group_lr();
    if (step_count_ == 1 && last_epoch_ > 0)
      return eta_min_ + (base_lr_ - eta_min_) * (1 + std::cos(epoch * kPi / t_max)) / 2;
    if (python_mod(last_epoch_ - 1 - t_max_, 2 * t_max_) == 0)
      return group_lr() + (base_lr_ - eta_min_) * (1 - std::cos(kPi / t_max)) / 2;
    return (1 + std::cos(kPi * epoch / t_max)) / (1 + std::cos(kPi * (epoch - 1) / t_max)) * (group_lr() - eta_min_) +
           eta_min_;
  }
  double closed_form_lr() const override {
    return eta_min_ + (base_lr_ - eta_min_) *
                          (1 + std::cos(kPi * static_cast<double>(last_epoch_) / static_cast<double>(t_max_))) / 2;
  }
  static int64_t python_mod(int64_t a, int64_t b) { return ((a % b) + b) % b; }
  Items own_state() const override { return {{"T_max", t_max_}, {"eta_min", eta_min_}}; }
  void load_own(const Value& state) override {
    const int64_t t_max = state.at("T_max").to_int_in(1, kMaxEpochs, "lr_scheduler state's T_max");
    const double eta_min = state.at("eta_min").to_double_in(0, kMaxLearningRate, "lr_scheduler state's eta_min");
    t_max_ = t_max;
    eta_min_ = eta_min;
  }

  int64_t t_max_;
  double eta_min_;
};

class LinearLr : public Scheduler {
 public:
  LinearLr(LearningRate& optimizer, double start_factor, double end_factor, int64_t total_iters)
      : Scheduler(optimizer, "LinearLR"), start_(start_factor), end_(end_factor), total_iters_(total_iters) {
    attach();
  }

 private:
  double get_lr() const override {
    if (last_epoch_ == 0) return group_lr() * start_;
    if (last_epoch_ > total_iters_) return group_lr();
    return group_lr() * (1. + (end_ - start_) / (static_cast<double>(total_iters_) * start_ +
                                                 static_cast<double>(last_epoch_ - 1) * (end_ - start_)));
  }
  double closed_form_lr() const override {
    return base_lr_ * (start_ + (end_ - start_) * static_cast<double>(std::min(total_iters_, last_epoch_)) /
                                    static_cast<double>(total_iters_));
  }
  Items own_state() const override {
    return {{"start_factor", start_}, {"end_factor", end_}, {"total_iters", total_iters_}};
  }
  void load_own(const Value& state) override {
    // PyTorch's own bounds: 0 < start_factor <= 1, 0 <= end_factor <= 1.
    const double start =
        state.at("start_factor")
            .to_double_in(std::numeric_limits<double>::denorm_min(), 1, "lr_scheduler state's start_factor");
    const double end = state.at("end_factor").to_double_in(0, 1, "lr_scheduler state's end_factor");
    const int64_t total_iters = state.at("total_iters").to_int_in(1, kMaxEpochs, "lr_scheduler state's total_iters");
    start_ = start;
    end_ = end;
    total_iters_ = total_iters;
  }

  double start_, end_;
  int64_t total_iters_;
};

class ConstantLr : public Scheduler {
 public:
  ConstantLr(LearningRate& optimizer, double factor, int64_t total_iters)
      : Scheduler(optimizer, "ConstantLR"), factor_(factor), total_iters_(total_iters) {
    attach();
  }

 private:
  double get_lr() const override {
    if (last_epoch_ == 0) return group_lr() * factor_;
    if (last_epoch_ > total_iters_ || last_epoch_ != total_iters_) return group_lr();
    return group_lr() * (1.0 / factor_);
  }
  double closed_form_lr() const override {
    return base_lr_ * (factor_ + (last_epoch_ >= total_iters_ ? 1 - factor_ : 0.0));
  }
  Items own_state() const override { return {{"factor", factor_}, {"total_iters", total_iters_}}; }
  void load_own(const Value& state) override {
    // PyTorch's own bounds: 0 < factor <= 1 (it divides by the factor at the end of the warm-up).
    const double factor =
        state.at("factor").to_double_in(std::numeric_limits<double>::denorm_min(), 1, "lr_scheduler state's factor");
    const int64_t total_iters = state.at("total_iters").to_int_in(0, kMaxEpochs, "lr_scheduler state's total_iters");
    factor_ = factor;
    total_iters_ = total_iters;
  }

  double factor_;
  int64_t total_iters_;
};

class SequentialLr : public LrSchedule {
 public:
  SequentialLr(LearningRate& optimizer, std::vector<std::unique_ptr<Scheduler>> schedulers,
               std::vector<int64_t> milestones)
      : schedulers_(std::move(schedulers)), milestones_(std::move(milestones)) {
    last_epoch_ = 0;  // last_epoch + 1
    optimizer.set_lr(*optimizer.initial_lr());
    for (auto& s : schedulers_) s->undo_epoch();
    schedulers_[0]->initial_step();
    last_lr_ = schedulers_[0]->last_lr();
  }

  void step() override {
    ++last_epoch_;
    const size_t idx = static_cast<size_t>(std::upper_bound(milestones_.begin(), milestones_.end(), last_epoch_) -
                                           milestones_.begin());
    Scheduler& scheduler = *schedulers_[idx];
    if (idx > 0 && milestones_[idx - 1] == last_epoch_) {
      scheduler.step_to(0);
    } else {
      scheduler.step();
    }
    last_lr_ = scheduler.last_lr();
  }
  double last_lr() const override { return last_lr_; }

  Value state_dict() const override {
    Value milestones = Value::list();
    for (int64_t m : milestones_) milestones.append(m);
    Value schedulers = Value::list();
    for (const auto& s : schedulers_) schedulers.append(s->state_dict());
    return Value::dict({{"_milestones", milestones},
                        {"last_epoch", last_epoch_},
                        {"_last_lr", Value::list({last_lr_})},
                        {"_schedulers", schedulers}});
  }

  void load_state_dict(const Value& state) override {
    const Value* saved = state.find("_schedulers");
    if (!saved)
      throw std::runtime_error(
          "lr_scheduler state has no warm-up (it is not a SequentialLR's), this run has one; resume with the "
          "warm-up it was saved with");
    if (saved->items().size() != schedulers_.size())
      throw std::runtime_error("lr_scheduler state chains " + std::to_string(saved->items().size()) +
                               " schedules, this run " + std::to_string(schedulers_.size()));
    std::vector<int64_t> milestones;
    for (const Value& m : state.at("_milestones").items())
      milestones.push_back(m.to_int_in(0, kMaxEpochs, "a milestone in the lr_scheduler state"));
    if (milestones.size() + 1 != schedulers_.size())
      throw std::runtime_error("lr_scheduler state has " + std::to_string(milestones.size()) + " milestones for " +
                               std::to_string(schedulers_.size()) + " schedules");
    const int64_t last_epoch = state.at("last_epoch").to_int_in(-1, kMaxEpochs, "lr_scheduler state's last_epoch");
    const auto& last_lrs = state.at("_last_lr").items();
    if (last_lrs.size() != 1) throw std::runtime_error("lr_scheduler state has no single _last_lr");
    const double last_lr = last_lrs[0].to_double_in(0, kMaxLearningRate, "lr_scheduler state's _last_lr[0]");
    // All schedules or none: a later one refusing its state puts the earlier ones back.
    std::vector<Value> before;
    for (const auto& s : schedulers_) before.push_back(s->state_dict());
    try {
      for (size_t i = 0; i < schedulers_.size(); ++i) schedulers_[i]->load_state_dict(saved->items()[i]);
    } catch (...) {
      for (size_t i = 0; i < schedulers_.size(); ++i) schedulers_[i]->load_state_dict(before[i]);
      throw;
    }
    milestones_ = std::move(milestones);
    last_epoch_ = last_epoch;
    last_lr_ = last_lr;
  }

 private:
  std::vector<std::unique_ptr<Scheduler>> schedulers_;
  std::vector<int64_t> milestones_;
  int64_t last_epoch_;
  double last_lr_;
};

}  // namespace

const std::vector<std::string>& known_lr_schedulers() {
  static const std::vector<std::string> names{"steplr", "cosineannealinglr"};
  return names;
}

const std::vector<std::string>& known_warmup_methods() {
  static const std::vector<std::string> names{"linear", "constant"};
  return names;
}

std::unique_ptr<LrSchedule> make_lr_schedule(LearningRate& optimizer, const LrScheduleOptions& o) {
  if (o.warmup_epochs < 0) throw std::invalid_argument("the warm-up cannot last a negative number of epochs");
  if (o.epochs < 1) throw std::invalid_argument("the schedule needs at least one epoch");
  if (!(std::isfinite(o.gamma) && o.gamma > 0 && o.gamma <= kMaxLearningRate))
    throw std::invalid_argument("gamma must be positive and at most 1000");
  if (!(std::isfinite(o.lr_min) && o.lr_min >= 0 && o.lr_min <= kMaxLearningRate))
    throw std::invalid_argument("eta_min must be from 0 to 1000");
  if (!(std::isfinite(optimizer.lr()) && optimizer.lr() >= 0 && optimizer.lr() <= kMaxLearningRate))
    throw std::invalid_argument("the optimizer's learning rate must be from 0 to 1000");
  std::unique_ptr<Scheduler> main;
  if (o.name == "steplr") {
    main = std::make_unique<StepLr>(optimizer, o.step_size, o.gamma);
  } else if (o.name == "cosineannealinglr") {
    main = std::make_unique<CosineAnnealingLr>(optimizer, o.epochs - o.warmup_epochs, o.lr_min);
  } else {
    throw std::invalid_argument("unknown learning-rate scheduler '" + o.name + "'");
  }
  if (o.warmup_epochs == 0) return main;
  if (!(o.warmup_decay > 0 && o.warmup_decay <= 1)) throw std::invalid_argument("the warm-up decay must be in (0, 1]");
  std::unique_ptr<Scheduler> warmup;
  if (o.warmup_method == "linear") {
    warmup = std::make_unique<LinearLr>(optimizer, o.warmup_decay, 1.0, o.warmup_epochs);
  } else if (o.warmup_method == "constant") {
    warmup = std::make_unique<ConstantLr>(optimizer, o.warmup_decay, o.warmup_epochs);
  } else {
    throw std::invalid_argument("unknown warm-up method '" + o.warmup_method + "'");
  }
  std::vector<std::unique_ptr<Scheduler>> chain;
  chain.push_back(std::move(warmup));
  chain.push_back(std::move(main));
  return std::make_unique<SequentialLr>(optimizer, std::move(chain), std::vector<int64_t>{o.warmup_epochs});
}

}  // namespace ddprun::engine
