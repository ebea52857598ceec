// A LibTorch module's state dict as Python's module.state_dict() lays it out (an OrderedDict of parameters and
// buffers by dotted name, each module's own entries before its children's), and loading one back strictly.
#pragma once

#include "checkpoint/value.h"

#include <torch/nn/module.h>

#include <functional>

namespace ddprun::checkpoint {

// Detached tensors sharing memory with the module (no copy is made; save() writes them).
Value module_state_dict(const torch::nn::Module& module);

// Copies every entry into the module's parameters and buffers (on their devices). Keys saved from a DDP-wrapped
// Python model ("module." prefix) are accepted. Throws std::runtime_error listing every missing and unexpected key
// and every shape and dtype mismatch; the module is unchanged when it throws.
void load_module_state_dict(torch::nn::Module& module, const Value& state);
// The same in two steps: checks everything (throwing as above) and returns the copy, to run once every other part of
// a checkpoint was checked too.
std::function<void()> prepare_module_state_dict(torch::nn::Module& module, const Value& state);

}  // namespace ddprun::checkpoint
