// AdamW: the update rule of torch.optim.AdamW (PyTorch 1.13, single-tensor path, not capturable) and its state dict.
#include "trainer/adamw.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros_like.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace ddprun::trainer {

using checkpoint::Value;

AdamW::AdamW(std::vector<at::Tensor> params, AdamWOptions options)
    : Optimizer(std::move(params), options.lr), state_(params_.size()), options_(options) {
  if (!(options.beta1 >= 0 && options.beta1 < 1) || !(options.beta2 >= 0 && options.beta2 < 1))
    throw std::invalid_argument("AdamW: betas must be in [0, 1)");
  if (options.eps < 0 || options.weight_decay < 0)
    throw std::invalid_argument("AdamW: eps and weight_decay must not be negative");
}

void AdamW::step() {
  at::NoGradGuard no_grad;
  const double beta1 = options_.beta1, beta2 = options_.beta2;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& param = params_[i];
    const at::Tensor& grad = param.grad();
    if (!grad.defined()) continue;
    State& s = state_[i];
    if (!s.step.defined()) {
      s.step = at::scalar_tensor(0.0, at::TensorOptions().dtype(at::kFloat));
      s.exp_avg = at::zeros_like(param, at::MemoryFormat::Preserve);
      s.exp_avg_sq = at::zeros_like(param, at::MemoryFormat::Preserve);
      if (options_.amsgrad) s.max_exp_avg_sq = at::zeros_like(param, at::MemoryFormat::Preserve);
    }
    // The same operations in the same order as Python, so the results agree to the last bit.
    s.step.add_(1);
    param.mul_(1 - lr_ * options_.weight_decay);
    s.exp_avg.mul_(beta1).add_(grad, 1 - beta1);
    s.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
    const double step = s.step.item<double>();
    const double bias_correction1 = 1 - std::pow(beta1, step);
    const double bias_correction2 = 1 - std::pow(beta2, step);
    const double step_size = lr_ / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);
    at::Tensor denom;
    if (options_.amsgrad) {
      at::maximum_out(s.max_exp_avg_sq, s.max_exp_avg_sq, s.exp_avg_sq);
      denom = (s.max_exp_avg_sq.sqrt().div(bias_correction2_sqrt)).add_(options_.eps);
    } else {
      denom = (s.exp_avg_sq.sqrt().div(bias_correction2_sqrt)).add_(options_.eps);
    }
    param.addcdiv_(s.exp_avg, denom, -step_size);
  }
}

Value AdamW::state_dict() const {
  Value state = Value::dict();
  for (size_t i = 0; i < params_.size(); ++i) {
    const State& s = state_[i];
    if (!s.step.defined()) continue;
    Value entry = Value::dict({{"step", s.step}, {"exp_avg", s.exp_avg}, {"exp_avg_sq", s.exp_avg_sq}});
    if (s.max_exp_avg_sq.defined()) entry.set("max_exp_avg_sq", s.max_exp_avg_sq);
    state.set(static_cast<int64_t>(i), entry);
  }
  Value group = Value::dict({{"lr", lr_},
                             {"betas", Value::tuple({options_.beta1, options_.beta2})},
                             {"eps", options_.eps},
                             {"weight_decay", options_.weight_decay},
                             {"amsgrad", options_.amsgrad},
                             {"foreach", Value()},
                             {"maximize", false},
                             {"capturable", false},
                             {"differentiable", false},
                             {"fused", Value()}});
  return pack_state_dict(state, group);
}

void AdamW::load_state_dict(const Value& saved) {
  const Value& group = load_group(saved, "AdamW", "betas");
  if (const Value* decoupled = group.find("decoupled_weight_decay"); decoupled && !decoupled->to_bool())
    throw std::runtime_error(
        "optimizer state is Adam's (decoupled_weight_decay=False), not AdamW's; ddptrain has no "
        "--opt adam");
  AdamWOptions restored;
  const auto& betas = group.at("betas").items();
  if (betas.size() != 2)
    throw std::runtime_error("optimizer state's betas has " + std::to_string(betas.size()) + " values, AdamW takes 2");
  const double below_one = std::nextafter(1.0, 0.0);
  restored.beta1 = betas[0].to_double_in(0, below_one, "optimizer state's betas[0]");
  restored.beta2 = betas[1].to_double_in(0, below_one, "optimizer state's betas[1]");
  restored.eps = group.at("eps").to_double_in(0, 1, "optimizer state's eps");
  restored.weight_decay = group.at("weight_decay").to_double_in(0, kMaxLearningRate, "optimizer state's weight_decay");
  restored.amsgrad = group.find("amsgrad") && group.at("amsgrad").to_bool();

  std::vector<State> state(params_.size());
  for (const auto& [i, entry] : load_entries(saved)) {
    State& s = state[i];
    // Python 1.12 and older wrote the step as a number; the CPU path keeps it as a float32 scalar on the CPU.
    const Value& step = entry->at("step");
    const std::string what = "the step of parameter " + std::to_string(i) + " in the optimizer state";
    if (step.is_tensor() && step.to_tensor().numel() != 1) throw std::runtime_error(what + " is not one number");
    const double steps =
        step.is_tensor()
            ? Value(step.to_tensor().to(at::kCPU, at::kDouble).item<double>()).to_double_in(0, kMaxStepCount, what)
            : step.to_double_in(0, kMaxStepCount, what);
    s.step = at::scalar_tensor(steps, at::TensorOptions().dtype(at::kFloat));
    s.exp_avg = restore_like(i, entry->at("exp_avg").to_tensor(), "exp_avg");
    s.exp_avg_sq = restore_like(i, entry->at("exp_avg_sq").to_tensor(), "exp_avg_sq");
    if (restored.amsgrad) {
      const Value* max = entry->find("max_exp_avg_sq");
      if (!max)
        throw std::runtime_error("optimizer state has amsgrad=True but no max_exp_avg_sq for parameter " +
                                 std::to_string(i));
      s.max_exp_avg_sq = restore_like(i, max->to_tensor(), "max_exp_avg_sq");
    }
  }
  restore_lr(group);  // last of what can throw
  restored.lr = options_.lr;
  options_ = restored;
  state_ = std::move(state);
}

}  // namespace ddprun::trainer
