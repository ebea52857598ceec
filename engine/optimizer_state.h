// A torch::optim optimizer's state (SGD, Adam, AdamW) in torch.optim's state_dict layout, and back: LibTorch keeps
// per-parameter state keyed by tensor address and has its own archive format; Python's checkpoints index
// parameters 0, 1, ... across the parameter groups.
#pragma once

#include "checkpoint/value.h"

#include <torch/optim/optimizer.h>

#include <functional>
#include <optional>

namespace ddprun::engine {

// {"state": {index: {...}}, "param_groups": [{hyper-parameters..., ["initial_lr"], "params": [...]}]}. Throws
// std::runtime_error for other optimizers than SGD, Adam and AdamW.
checkpoint::Value optimizer_state_dict(const torch::optim::Optimizer& optimizer, std::optional<double> initial_lr);

// Loads Python's layout into `optimizer`, each state tensor onto its parameter's device; returns the groups'
// initial_lr when there is one. Throws std::runtime_error naming what does not fit (another optimizer's state,
// other group or parameter counts, shapes) before anything is changed.
std::optional<double> load_optimizer_state_dict(torch::optim::Optimizer& optimizer, const checkpoint::Value& state);
// The same in two steps: checks everything (throwing as above) and returns the change, which returns initial_lr.
std::function<std::optional<double>()> prepare_optimizer_state_dict(torch::optim::Optimizer& optimizer,
                                                                    const checkpoint::Value& state);

}  // namespace ddprun::engine
