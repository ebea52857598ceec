// A pickle protocol-2 writer for Value that writes what Python's torch.save writes: tensors as
// torch._utils._rebuild_tensor_v2 over persistent-id storages, state dicts as collections.OrderedDict. It uses only
// the opcodes and globals that PyTorch 2.x torch.load(weights_only=True) accepts.
#pragma once

#include "checkpoint/value.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ddprun::checkpoint {

// One storage the pickle refers to by key; the caller writes its bytes as the zip record "data/<key>".
struct StorageRecord {
  std::string key;
  at::Tensor tensor;  // one tensor viewing the storage: its storage(), device and dtype are what is written
  c10::ScalarType dtype;
  int64_t numel;  // elements of dtype in the whole storage
};

struct Pickle {
  std::string bytes;                    // data.pkl
  std::vector<StorageRecord> storages;  // in key order "0", "1", ...
};

// Pickles `root`. Views of one storage share one storage record (the whole storage is recorded); an object that
// appears twice (the same list, dict or tensor) is written once and shared on load. Throws std::runtime_error for
// what a checkpoint cannot hold: cycles, nesting deeper than 1000, strings that are not UTF-8, undefined, sparse,
// quantized or storage-less tensors, dtypes other than float32/64, float16, bfloat16, int8/16/32/64, uint8, bool.
Pickle write_pickle(const Value& root);

}  // namespace ddprun::checkpoint
