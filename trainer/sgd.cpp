// SGD: the update rule of torch.optim.SGD (PyTorch 1.13, single-tensor path) and its state dict.
#include "trainer/sgd.h"

#include <ATen/core/grad_mode.h>

#include <stdexcept>
#include <string>

namespace ddprun::trainer {

using checkpoint::Value;

Sgd::Sgd(std::vector<at::Tensor> params, SgdOptions options)
    : Optimizer(std::move(params), options.lr),
      momentum_buffers_(params_.size()),
      stepped_(params_.size(), false),
      options_(options) {
  if (options_.nesterov && (options_.momentum <= 0 || options_.dampening != 0))
    throw std::invalid_argument("SGD: Nesterov momentum requires a momentum and zero dampening");
}

void Sgd::step() {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    const at::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    at::Tensor d_p = grad;
    if (options_.weight_decay != 0) d_p = d_p.add(p, options_.weight_decay);
    if (options_.momentum != 0) {
      at::Tensor& buf = momentum_buffers_[i];
      if (!buf.defined()) {
        buf = d_p.clone().detach();
      } else {
        buf.mul_(options_.momentum).add_(d_p, 1 - options_.dampening);
      }
      d_p = options_.nesterov ? d_p.add(buf, options_.momentum) : buf;
    }
    p.add_(d_p, -lr_);
    stepped_[i] = true;
  }
}

Value Sgd::state_dict() const {
  Value state = Value::dict();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!stepped_[i]) continue;
    Value buffer = momentum_buffers_[i].defined() ? Value(momentum_buffers_[i]) : Value();
    state.set(static_cast<int64_t>(i), Value::dict({{"momentum_buffer", buffer}}));
  }
  Value group = Value::dict({{"lr", lr_},
                             {"momentum", options_.momentum},
                             {"dampening", options_.dampening},
                             {"weight_decay", options_.weight_decay},
                             {"nesterov", options_.nesterov},
                             {"maximize", false},
                             {"foreach", Value()},
                             {"differentiable", false}});
  return pack_state_dict(state, group);
}

void Sgd::load_state_dict(const Value& saved) {
  const Value& group = load_group(saved, "SGD", "momentum");
  if (group.at("nesterov").to_bool() != options_.nesterov)
    throw std::runtime_error(std::string("optimizer state is ") +
                             (options_.nesterov ? "plain SGD's" : "Nesterov SGD's") + "; resume with --opt " +
                             (options_.nesterov ? "sgd" : "sgd_nesterov"));
  SgdOptions restored;
  restored.momentum = group.at("momentum").to_double_in(0, 1, "optimizer state's momentum");
  restored.dampening = group.at("dampening").to_double_in(0, 1, "optimizer state's dampening");
  restored.weight_decay = group.at("weight_decay").to_double_in(0, kMaxLearningRate, "optimizer state's weight_decay");
  restored.nesterov = group.at("nesterov").to_bool();

  std::vector<at::Tensor> buffers(params_.size());
  std::vector<bool> stepped(params_.size(), false);
  for (const auto& [i, entry] : load_entries(saved)) {
    stepped[i] = true;
    const Value* buffer = entry->find("momentum_buffer");
    if (buffer != nullptr && !buffer->is_none()) buffers[i] = restore_like(i, buffer->to_tensor(), "momentum buffer");
  }
  restore_lr(group);  // last of what can throw
  restored.lr = options_.lr;
  options_ = restored;
  momentum_buffers_ = std::move(buffers);
  stepped_ = std::move(stepped);
}

}  // namespace ddprun::trainer
