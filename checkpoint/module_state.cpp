// Module state dicts: names in Python's order, strict loading with a message that says what does not match.
#include "checkpoint/module_state.h"

#include <ATen/core/grad_mode.h>

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace ddprun::checkpoint {
namespace {

// (name, tensor) in the order Python's state_dict() uses: each module's parameters, then its buffers, then children.
std::vector<std::pair<std::string, at::Tensor>> named_state(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> entries;
  for (const auto& item : module.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    const std::string prefix = item.key().empty() ? "" : item.key() + ".";
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false))
      entries.emplace_back(prefix + p.key(), p.value());
    for (const auto& b : item.value()->named_buffers(/*recurse=*/false))
      entries.emplace_back(prefix + b.key(), b.value());
  }
  return entries;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  const size_t shown = std::min<size_t>(names.size(), 5);
  for (size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > shown) out += " and " + std::to_string(names.size() - shown) + " more";
  return out;
}

}  // namespace

Value module_state_dict(const torch::nn::Module& module) {
  Value state = Value::ordered_dict();
  for (const auto& [name, tensor] : named_state(module)) state.set(name, tensor.detach());
  return state;
}

void load_module_state_dict(torch::nn::Module& module, const Value& state) {
  prepare_module_state_dict(module, state)();
}

std::function<void()> prepare_module_state_dict(torch::nn::Module& module, const Value& state) {
  if (!state.is_mapping())
    throw std::runtime_error(std::string("model state is a ") + state.kind_name() + ", not a dict");
  std::map<std::string, const Value*> saved;
  bool all_wrapped = !state.entries().empty();
  for (const auto& [key, value] : state.entries()) {
    if (!key.is_string()) throw std::runtime_error("model state has a key that is not a string");
    all_wrapped = all_wrapped && key.to_string().rfind("module.", 0) == 0;
  }
  for (const auto& [key, value] : state.entries())
    saved[all_wrapped ? key.to_string().substr(7) : key.to_string()] = &value;

  std::vector<std::string> missing, mismatched, wrong_dtype;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (destination, source)
  for (const auto& [name, destination] : named_state(module)) {
    auto found = saved.find(name);
    if (found == saved.end()) {
      missing.push_back(name);
      continue;
    }
    if (!found->second->is_tensor()) {
      mismatched.push_back(name + " (a " + found->second->kind_name() + ", not a tensor)");
    } else if (!found->second->to_tensor().sizes().equals(destination.sizes())) {
      mismatched.push_back(name + " (saved " + c10::str(found->second->to_tensor().sizes()) + ", model has " +
                           c10::str(destination.sizes()) + ")");
    } else if (found->second->to_tensor().scalar_type() != destination.scalar_type()) {
      wrong_dtype.push_back(name + " (saved " + std::string(c10::toString(found->second->to_tensor().scalar_type())) +
                            ", model has " + c10::toString(destination.scalar_type()) + ")");
    } else {
      copies.emplace_back(destination, found->second->to_tensor());
    }
    saved.erase(found);
  }
  std::vector<std::string> unexpected;
  for (const auto& entry : saved) unexpected.push_back(entry.first);
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty() || !wrong_dtype.empty()) {
    std::string message = "model state does not match the model:";
    if (!missing.empty()) message += " missing " + join(missing) + ";";
    if (!unexpected.empty()) message += " unexpected " + join(unexpected) + ";";
    if (!mismatched.empty()) message += " wrong shape " + join(mismatched) + ";";
    if (!wrong_dtype.empty()) message += " wrong dtype " + join(wrong_dtype) + ";";
    message.pop_back();
    throw std::runtime_error(message);
  }
  return [copies = std::move(copies)] {
    at::NoGradGuard no_grad;
    for (const auto& [destination, source] : copies) at::Tensor(destination).copy_(source);
  };
}

}  // namespace ddprun::checkpoint
