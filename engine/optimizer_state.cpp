// torch::optim::SGD/Adam/AdamW state <-> torch.optim's state_dict layout.
#include "engine/optimizer_state.h"

#include "engine/learning_rate.h"

#include <ATen/ops/isfinite.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/StringUtil.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace ddprun::engine {
namespace {

using checkpoint::Value;

enum class Kind { Sgd, Adam, AdamW };

Kind kind_of(const torch::optim::Optimizer& optimizer) {
  if (optimizer.param_groups().empty()) throw std::runtime_error("the optimizer has no parameter group");
  const torch::optim::OptimizerOptions& options = optimizer.param_groups().front().options();
  if (dynamic_cast<const torch::optim::SGDOptions*>(&options)) return Kind::Sgd;
  if (dynamic_cast<const torch::optim::AdamWOptions*>(&options)) return Kind::AdamW;
  if (dynamic_cast<const torch::optim::AdamOptions*>(&options)) return Kind::Adam;
  throw std::runtime_error("checkpoints hold torch::optim::SGD, Adam and AdamW states; this optimizer is another one");
}

const char* name_of(Kind kind) { return kind == Kind::Sgd ? "SGD" : kind == Kind::Adam ? "Adam" : "AdamW"; }

// torch::optim keys its per-parameter state by the TensorImpl's address: as a string in LibTorch 1.x, as the
// pointer itself in 2.x. The key type comes from the map, so both build.
using StateKey = std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;

template <typename Key>
Key state_key(const at::Tensor& param) {
  if constexpr (std::is_same_v<Key, std::string>)
    return c10::str(param.unsafeGetTensorImpl());
  else
    return param.unsafeGetTensorImpl();
}

StateKey key_of(const at::Tensor& param) { return state_key<StateKey>(param); }

// Python's hyper-parameters of one group, without "params".
Value group_dict(Kind kind, const torch::optim::OptimizerOptions& options) {
  if (kind == Kind::Sgd) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(options);
    return Value::dict({{"lr", o.lr()},
                        {"momentum", o.momentum()},
                        {"dampening", o.dampening()},
                        {"weight_decay", o.weight_decay()},
                        {"nesterov", o.nesterov()},
                        {"maximize", false},
                        {"foreach", Value()},
                        {"differentiable", false}});
  }
  auto adam_like = [](double lr, std::tuple<double, double> betas, double eps, double wd, bool amsgrad) {
    return Value::dict({{"lr", lr},
                        {"betas", Value::tuple({std::get<0>(betas), std::get<1>(betas)})},
                        {"eps", eps},
                        {"weight_decay", wd},
                        {"amsgrad", amsgrad},
                        {"foreach", Value()},
                        {"maximize", false},
                        {"capturable", false},
                        {"differentiable", false},
                        {"fused", Value()}});
  };
  if (kind == Kind::Adam) {
    const auto& o = static_cast<const torch::optim::AdamOptions&>(options);
    return adam_like(o.lr(), o.betas(), o.eps(), o.weight_decay(), o.amsgrad());
  }
  const auto& o = static_cast<const torch::optim::AdamWOptions&>(options);
  return adam_like(o.lr(), o.betas(), o.eps(), o.weight_decay(), o.amsgrad());
}

// `saved` as a fresh tensor shaped, typed and placed like `param`.
at::Tensor like(const at::Tensor& param, const Value& saved, size_t index, const char* what) {
  const at::Tensor& t = saved.to_tensor();
  if (t.sizes() != param.sizes())
    throw std::runtime_error(std::string("optimizer state: ") + what + " of parameter " + std::to_string(index) +
                             " has shape " + c10::str(t.sizes()) + ", the parameter " + c10::str(param.sizes()));
  if (t.is_floating_point() && !at::isfinite(t).all().item<bool>())
    throw std::runtime_error(std::string("optimizer state: ") + what + " of parameter " + std::to_string(index) +
                             " holds NaN or inf values: the run that saved it had diverged");
  return t.to(param.device(), param.scalar_type()).clone();
}

// Adam's and AdamW's per-parameter states have the same fields; Python (1.13 on) keeps the step as a float32 scalar.
template <class AdamState>
Value adam_entry(const AdamState& s) {
  Value entry = Value::dict({{"step", at::scalar_tensor(static_cast<double>(s.step()), at::kFloat)},
                             {"exp_avg", s.exp_avg().detach()},
                             {"exp_avg_sq", s.exp_avg_sq().detach()}});
  if (s.max_exp_avg_sq().defined()) entry.set("max_exp_avg_sq", s.max_exp_avg_sq().detach());
  return entry;
}

}  // namespace

Value optimizer_state_dict(const torch::optim::Optimizer& optimizer, std::optional<double> initial_lr) {
  const Kind kind = kind_of(optimizer);
  Value state = Value::dict();
  Value groups = Value::list();
  int64_t index = 0;
  for (const torch::optim::OptimizerParamGroup& group : optimizer.param_groups()) {
    Value params = Value::list();
    for (const at::Tensor& p : group.params()) {
      const auto found = optimizer.state().find(key_of(p));
      if (found != optimizer.state().end()) {
        if (kind == Kind::Sgd) {
          const auto& s = static_cast<const torch::optim::SGDParamState&>(*found->second);
          if (s.momentum_buffer().defined())
            state.set(index, Value::dict({{"momentum_buffer", s.momentum_buffer().detach()}}));
        } else if (kind == Kind::Adam) {
          state.set(index, adam_entry(static_cast<const torch::optim::AdamParamState&>(*found->second)));
        } else {
          state.set(index, adam_entry(static_cast<const torch::optim::AdamWParamState&>(*found->second)));
        }
      }
      params.append(index++);
    }
    Value packed = group_dict(kind, group.options());
    if (initial_lr) packed.set("initial_lr", *initial_lr);
    packed.set("params", params);
    groups.append(packed);
  }
  return Value::dict({{"state", state}, {"param_groups", groups}});
}

std::optional<double> load_optimizer_state_dict(torch::optim::Optimizer& optimizer, const Value& saved) {
  return prepare_optimizer_state_dict(optimizer, saved)();
}

std::function<std::optional<double>()> prepare_optimizer_state_dict(torch::optim::Optimizer& optimizer,
                                                                    const Value& saved) {
  if (!saved.is_mapping() || !saved.find("param_groups") || !saved.find("state"))
    throw std::runtime_error("optimizer state is not a torch.optim state_dict (it has no 'state' and 'param_groups')");
  const Kind kind = kind_of(optimizer);
  const char* name = name_of(kind);
  const std::vector<Value>& groups = saved.at("param_groups").items();
  auto& ours = optimizer.param_groups();
  if (groups.size() != ours.size())
    throw std::runtime_error("optimizer state has " + std::to_string(groups.size()) + " parameter group(s), this " +
                             name + " has " + std::to_string(ours.size()));
  const char* marker = kind == Kind::Sgd ? "momentum" : "betas";
  std::vector<at::Tensor> params;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (!groups[g].find(marker))
      throw std::runtime_error(std::string("optimizer state is not ") + name + "'s (its parameter group has no '" +
                               marker + "'); resume with the optimizer it was saved with");
    // PyTorch 2.x's Adam can be AdamW (decoupled_weight_decay); LibTorch's optimizers cannot maximize.
    if (const Value* decoupled = groups[g].find("decoupled_weight_decay");
        decoupled && kind != Kind::Sgd && decoupled->to_bool() != (kind == Kind::AdamW))
      throw std::runtime_error(std::string("optimizer state is ") + (decoupled->to_bool() ? "AdamW" : "Adam") +
                               "'s (decoupled_weight_decay), not " + name +
                               "'s; resume with the optimizer it was saved with");
    if (const Value* maximize = groups[g].find("maximize"); maximize && maximize->to_bool())
      throw std::runtime_error("optimizer state has maximize=True, which LibTorch's optimizers do not do");
    if (groups[g].at("params").items().size() != ours[g].params().size())
      throw std::runtime_error("optimizer state: parameter group " + std::to_string(g) + " has " +
                               std::to_string(groups[g].at("params").items().size()) + " parameters, this " + name +
                               "'s " + std::to_string(ours[g].params().size()));
    for (const at::Tensor& p : ours[g].params()) params.push_back(p);
  }

  // Everything is read and checked first; the optimizer changes only once all of it fits.
  std::vector<std::function<void()>> apply;
  std::optional<double> initial_lr;
  for (size_t g = 0; g < groups.size(); ++g) {
    const Value& group = groups[g];
    torch::optim::OptimizerOptions& options = ours[g].options();

    const double lr = group.at("lr").to_double_in(0, kMaxLearningRate, "optimizer state's lr");
    const double wd = group.at("weight_decay").to_double_in(0, kMaxLearningRate, "optimizer state's weight_decay");
    if (const Value* initial = group.find("initial_lr"))
      initial_lr = initial->to_double_in(0, kMaxLearningRate, "optimizer state's initial_lr");
    if (kind == Kind::Sgd) {
      const double momentum = group.at("momentum").to_double_in(0, 1, "optimizer state's momentum");
      const double dampening = group.at("dampening").to_double_in(0, 1, "optimizer state's dampening");
      const bool nesterov = group.at("nesterov").to_bool();
      apply.emplace_back([&options, lr, wd, momentum, dampening, nesterov] {
        auto& o = static_cast<torch::optim::SGDOptions&>(options);
        o.lr(lr).weight_decay(wd).momentum(momentum).dampening(dampening).nesterov(nesterov);
      });
    } else {
      const auto& betas = group.at("betas").items();
      if (betas.size() != 2) throw std::runtime_error("optimizer state: 'betas' is not a pair");
      const double below_one = std::nextafter(1.0, 0.0);
      const std::tuple<double, double> b{betas[0].to_double_in(0, below_one, "optimizer state's betas[0]"),
                                         betas[1].to_double_in(0, below_one, "optimizer state's betas[1]")};
      const double eps = group.at("eps").to_double_in(0, 1, "optimizer state's eps");
      const bool amsgrad = group.at("amsgrad").to_bool();
      apply.emplace_back([&options, kind, lr, wd, b, eps, amsgrad] {
        if (kind == Kind::Adam) {
          static_cast<torch::optim::AdamOptions&>(options).lr(lr).weight_decay(wd).betas(b).eps(eps).amsgrad(amsgrad);
        } else {
          static_cast<torch::optim::AdamWOptions&>(options).lr(lr).weight_decay(wd).betas(b).eps(eps).amsgrad(amsgrad);
        }
      });
    }
  }
  for (const auto& [key, entry] : saved.at("state").entries()) {
    const int64_t i = key.to_int_in(0, static_cast<int64_t>(params.size()) - 1,
                                    "a parameter index in the optimizer state (the optimizer has " +
                                        std::to_string(params.size()) + " parameters)");
    const at::Tensor& p = params[static_cast<size_t>(i)];
    if (kind == Kind::Sgd) {
      const Value* buffer = entry.find("momentum_buffer");
      if (buffer == nullptr || buffer->is_none()) continue;
      at::Tensor restored = like(p, *buffer, static_cast<size_t>(i), "momentum_buffer");
      apply.emplace_back([&optimizer, p, restored] {
        auto s = std::make_unique<torch::optim::SGDParamState>();
        s->momentum_buffer(restored);
        optimizer.state()[key_of(p)] = std::move(s);
      });
    } else {
      const Value& step = entry.at("step");
      const std::string what = "the step of parameter " + std::to_string(i) + " in the optimizer state";
      if (step.is_tensor() && step.to_tensor().numel() != 1) throw std::runtime_error(what + " is not one number");
      const int64_t steps = static_cast<int64_t>(
          (step.is_tensor() ? Value(step.to_tensor().to(at::kCPU, at::kDouble).item<double>()) : step)
              .to_double_in(0, static_cast<double>(kMaxStepCount), what));
      at::Tensor exp_avg = like(p, entry.at("exp_avg"), static_cast<size_t>(i), "exp_avg");
      at::Tensor exp_avg_sq = like(p, entry.at("exp_avg_sq"), static_cast<size_t>(i), "exp_avg_sq");
      at::Tensor max_sq;
      if (const Value* m = entry.find("max_exp_avg_sq"); m && !m->is_none())
        max_sq = like(p, *m, static_cast<size_t>(i), "max_exp_avg_sq");
      apply.emplace_back([&optimizer, kind, p, steps, exp_avg, exp_avg_sq, max_sq] {
        auto fill = [&](auto state) {
          state->step(steps);
          state->exp_avg(exp_avg);
          state->exp_avg_sq(exp_avg_sq);
          if (max_sq.defined()) state->max_exp_avg_sq(max_sq);
          optimizer.state()[key_of(p)] = std::move(state);
        };
        if (kind == Kind::Adam) {
          fill(std::make_unique<torch::optim::AdamParamState>());
        } else {
          fill(std::make_unique<torch::optim::AdamWParamState>());
        }
      });
    }
  }
  return [&optimizer, apply = std::move(apply), initial_lr] {
    optimizer.state().clear();
    for (const auto& change : apply) change();
    return initial_lr;
  };
}

}  // namespace ddprun::engine
