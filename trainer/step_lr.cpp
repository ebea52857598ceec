// StepLR's schedule and its Python state dict.
#include "trainer/step_lr.h"

#include <cmath>
#include <stdexcept>

namespace ddprun::trainer {

using checkpoint::Value;

StepLr::StepLr(double base_lr, int64_t step_size, double gamma)
    : base_lr_(base_lr), step_size_(step_size), gamma_(gamma), last_lr_(base_lr) {
  if (step_size < 1) throw std::invalid_argument("StepLR: step_size must be at least 1");
}

double StepLr::lr_at(int64_t epoch) const {
  return base_lr_ * std::pow(gamma_, static_cast<double>(epoch / step_size_));
}

double StepLr::step() {
  // Python's StepLR.get_lr() multiplies the current rate by gamma at each boundary (rather than using the closed
  // form), and so does this, so the rates agree to the last bit.
  ++last_epoch_;
  if (last_epoch_ % step_size_ == 0) last_lr_ *= gamma_;
  return last_lr_;
}

Value StepLr::state_dict() const {
  return Value::dict({{"step_size", step_size_},
                      {"gamma", gamma_},
                      {"base_lrs", Value::list({base_lr_})},
                      {"last_epoch", last_epoch_},
                      {"verbose", false},
                      {"_step_count", last_epoch_ + 1},
                      {"_get_lr_called_within_step", false},
                      {"_last_lr", Value::list({last_lr_})}});
}

void StepLr::load_state_dict(const Value& state) {
  const auto& base_lrs = state.at("base_lrs").items();
  if (base_lrs.size() != 1)
    throw std::runtime_error("lr_scheduler state has " + std::to_string(base_lrs.size()) +
                             " base learning rates; ddptrain uses one parameter group");
  const int64_t step_size = state.at("step_size").to_int();
  if (step_size < 1) throw std::runtime_error("lr_scheduler state has step_size < 1");
  step_size_ = step_size;
  gamma_ = state.at("gamma").to_double();
  base_lr_ = base_lrs[0].to_double();
  last_epoch_ = state.at("last_epoch").to_int();
  const Value* last = state.find("_last_lr");
  last_lr_ = last ? last->items().at(0).to_double() : lr_at(last_epoch_);
}

}  // namespace ddprun::trainer
