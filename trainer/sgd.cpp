// SGD: the update rule of torch.optim.SGD (PyTorch 1.13, single-tensor path) and its state dict.
#include "trainer/sgd.h"

#include <ATen/core/grad_mode.h>

#include <stdexcept>
#include <string>

namespace ddprun::trainer {

using checkpoint::Value;

Sgd::Sgd(std::vector<at::Tensor> params, SgdOptions options)
    : params_(std::move(params)),
      momentum_buffers_(params_.size()),
      stepped_(params_.size(), false),
      options_(options),
      initial_lr_(options.lr) {
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
    p.add_(d_p, -options_.lr);
    stepped_[i] = true;
  }
}

void Sgd::zero_grad() {
  for (at::Tensor& p : params_) {
    if (p.grad().defined()) p.mutable_grad().zero_();
  }
}

Value Sgd::state_dict() const {
  Value state = Value::dict();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!stepped_[i]) continue;
    Value buffer = momentum_buffers_[i].defined() ? Value(momentum_buffers_[i]) : Value();
    state.set(static_cast<int64_t>(i), Value::dict({{"momentum_buffer", buffer}}));
  }
  Value indices = Value::list();
  for (size_t i = 0; i < params_.size(); ++i) indices.append(static_cast<int64_t>(i));
  Value group = Value::dict({{"lr", options_.lr},
                             {"momentum", options_.momentum},
                             {"dampening", options_.dampening},
                             {"weight_decay", options_.weight_decay},
                             {"nesterov", options_.nesterov},
                             {"maximize", false},
                             {"foreach", Value()},
                             {"differentiable", false},
                             {"initial_lr", initial_lr_},
                             {"params", indices}});
  return Value::dict({{"state", state}, {"param_groups", Value::list({group})}});
}

void Sgd::load_state_dict(const Value& saved) {
  const auto& groups = saved.at("param_groups").items();
  if (groups.size() != 1)
    throw std::runtime_error("optimizer state has " + std::to_string(groups.size()) +
                             " parameter groups; ddptrain uses one");
  const Value& group = groups[0];
  const size_t saved_params = group.at("params").items().size();
  if (saved_params != params_.size())
    throw std::runtime_error("optimizer state is for " + std::to_string(saved_params) + " parameters, the model has " +
                             std::to_string(params_.size()));
  if (group.find("maximize") && group.at("maximize").to_bool())
    throw std::runtime_error("optimizer state has maximize=True, which ddptrain's SGD does not support");

  SgdOptions restored;
  restored.lr = group.at("lr").to_double();
  restored.momentum = group.at("momentum").to_double();
  restored.dampening = group.at("dampening").to_double();
  restored.weight_decay = group.at("weight_decay").to_double();
  restored.nesterov = group.at("nesterov").to_bool();
  const Value* initial = group.find("initial_lr");

  std::vector<at::Tensor> buffers(params_.size());
  std::vector<bool> stepped(params_.size(), false);
  for (const auto& [key, entry] : saved.at("state").entries()) {
    const int64_t i = key.to_int();
    if (i < 0 || i >= static_cast<int64_t>(params_.size()))
      throw std::runtime_error("optimizer state names parameter " + std::to_string(i) + ", which does not exist");
    stepped[i] = true;
    const Value* buffer = entry.find("momentum_buffer");
    if (buffer == nullptr || buffer->is_none()) continue;
    const at::Tensor& t = buffer->to_tensor();
    if (!t.sizes().equals(params_[i].sizes()))
      throw std::runtime_error("optimizer momentum buffer " + std::to_string(i) + " has shape " + c10::str(t.sizes()) +
                               ", parameter has " + c10::str(params_[i].sizes()));
    buffers[i] = t.to(params_[i].options()).clone();
  }
  options_ = restored;
  initial_lr_ = initial ? initial->to_double() : restored.lr;
  momentum_buffers_ = std::move(buffers);
  stepped_ = std::move(stepped);
}

}  // namespace ddprun::trainer
