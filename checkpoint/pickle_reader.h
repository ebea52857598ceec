// A restricted unpickler for the data.pkl that Python's torch.save writes (protocol 2 by default, up to 5). It
// builds a Value and refuses, with a message naming it, every opcode and global that
// torch.load(weights_only=True) would refuse: nothing in the file is ever executed. Storages are fetched through a
// callback, so this file knows nothing of zip.
#pragma once

#include "checkpoint/value.h"

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace ddprun::checkpoint {

// Returns storage `key` (saved from device `location`, e.g. "cpu" or "cuda:1") as a 1-D tensor of `numel` elements
// of `dtype`, on the device the loaded tensors should live on. Called once per key; the tensors built on it share
// its storage.
using StorageLoader = std::function<at::Tensor(const std::string& key, const std::string& location,
                                               c10::ScalarType dtype, int64_t numel)>;

// The memory one unpickling may build (lists, dicts, strings, the pickle stack and memo; storages not counted: they
// are the file's own pages): kPickleBudgetBaseBytes plus kPickleBudgetPerByte for every byte of the pickle. A state
// dict needs a small fraction of it; a pickle built to exhaust memory (5 M empty lists in 5 MB took 2.3 GB) is refused
// at the budget, with a message saying so.
constexpr size_t kPickleBudgetBaseBytes = size_t{64} << 20;
constexpr size_t kPickleBudgetPerByte = 64;

// Unpickles `size` bytes at `data`. Accepted globals: collections.OrderedDict, torch._utils._rebuild_tensor_v2,
// torch._utils._rebuild_parameter(_with_state) (both yield the tensor), torch.<X>Storage for the checkpoint dtypes,
// torch.UntypedStorage (as uint8), torch.device (yields its string, e.g. "cuda:0"). A bare storage yields a 1-D
// tensor over it; BUILD on an OrderedDict (the _metadata of a state dict) is accepted and dropped; loaded tensors
// never require grad. Throws std::runtime_error on anything refused, truncated, malformed or over the memory budget,
// with the byte offset.
Value read_pickle(const void* data, size_t size, const StorageLoader& load_storage);

}  // namespace ddprun::checkpoint
