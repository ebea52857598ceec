// What every optimizer shares: in-place zero_grad, the parameter group's bookkeeping, checks on a loaded state, and
// the factory that maps --opt to one.
#include "trainer/optimizer.h"

#include "trainer/adamw.h"
#include "trainer/sgd.h"

#include <ATen/ops/isfinite.h>

#include <stdexcept>

namespace ddprun::trainer {

using checkpoint::Value;

void Optimizer::zero_grad() {
  for (at::Tensor& p : params_) {
    if (p.grad().defined()) p.mutable_grad().zero_();
  }
}

Value Optimizer::pack_state_dict(Value state, Value group) const {
  if (initial_lr_) group.set("initial_lr", *initial_lr_);
  Value indices = Value::list();
  for (size_t i = 0; i < params_.size(); ++i) indices.append(static_cast<int64_t>(i));
  group.set("params", indices);
  return Value::dict({{"state", std::move(state)}, {"param_groups", Value::list({std::move(group)})}});
}

void Optimizer::restore_lr(const Value& group) {
  const double lr = group.at("lr").to_double_in(0, kMaxLearningRate, "optimizer state's lr");
  const Value* initial = group.find("initial_lr");
  initial_lr_ = initial
                    ? std::optional<double>(initial->to_double_in(0, kMaxLearningRate, "optimizer state's initial_lr"))
                    : std::nullopt;
  lr_ = lr;
}

const Value& Optimizer::load_group(const Value& saved, const char* optimizer_name, const char* marker) {
  const auto& groups = saved.at("param_groups").items();
  if (groups.size() != 1)
    throw std::runtime_error("optimizer state has " + std::to_string(groups.size()) +
                             " parameter groups; ddptrain uses one");
  const Value& group = groups[0];
  if (!group.find(marker))
    throw std::runtime_error(std::string("optimizer state is not ") + optimizer_name +
                             "'s (its parameter group has no '" + marker +
                             "'); resume with the --opt it was saved with");
  const size_t saved_params = group.at("params").items().size();
  if (saved_params != params_.size())
    throw std::runtime_error("optimizer state is for " + std::to_string(saved_params) + " parameters, the model has " +
                             std::to_string(params_.size()));
  if (group.find("maximize") && group.at("maximize").to_bool())
    throw std::runtime_error(std::string("optimizer state has maximize=True, which ddptrain's ") + optimizer_name +
                             " does not support");
  return group;
}

std::vector<std::pair<size_t, const Value*>> Optimizer::load_entries(const Value& saved) const {
  std::vector<std::pair<size_t, const Value*>> entries;
  for (const auto& [key, entry] : saved.at("state").entries()) {
    const int64_t i = key.to_int_in(
        0, static_cast<int64_t>(params_.size()) - 1,
        "a parameter index in the optimizer state (the model has " + std::to_string(params_.size()) + " parameters)");
    entries.emplace_back(static_cast<size_t>(i), &entry);
  }
  return entries;
}

at::Tensor Optimizer::restore_like(size_t i, const at::Tensor& saved, const char* what) const {
  if (!saved.sizes().equals(params_[i].sizes()))
    throw std::runtime_error(std::string("optimizer ") + what + " " + std::to_string(i) + " has shape " +
                             c10::str(saved.sizes()) + ", parameter has " + c10::str(params_[i].sizes()));
  if (saved.is_floating_point() && !at::isfinite(saved).all().item<bool>())
    throw std::runtime_error(std::string("optimizer ") + what + " " + std::to_string(i) +
                             " holds NaN or inf values: the run that saved it had diverged");
  return saved.to(params_[i].options()).clone();
}

const std::vector<std::string>& known_optimizers() {
  static const std::vector<std::string> names{"sgd", "sgd_nesterov", "adamw"};
  return names;
}

std::unique_ptr<Optimizer> make_optimizer(std::vector<at::Tensor> params, const OptimizerOptions& options) {
  if (options.name == "sgd" || options.name == "sgd_nesterov") {
    SgdOptions sgd;
    sgd.lr = options.lr;
    sgd.momentum = options.momentum;
    sgd.weight_decay = options.weight_decay;
    sgd.nesterov = options.name == "sgd_nesterov";
    return std::make_unique<Sgd>(std::move(params), sgd);
  }
  if (options.name == "adamw") {
    AdamWOptions adamw;
    adamw.lr = options.lr;
    adamw.weight_decay = options.weight_decay;
    return std::make_unique<AdamW>(std::move(params), adamw);
  }
  throw std::invalid_argument("unknown optimizer '" + options.name + "'");
}

}  // namespace ddprun::trainer
