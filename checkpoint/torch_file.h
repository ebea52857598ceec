// Reading and writing the files Python's torch.save writes (a zip holding data.pkl and one record per storage),
// restricted to what torch.load(..., weights_only=True) accepts. Saving is atomic: a temporary file in the same
// folder is written, fsynced and renamed over the target, and the folder is fsynced.
#pragma once

#include "checkpoint/value.h"

#include <c10/core/Device.h>

#include <stdexcept>
#include <string>

namespace ddprun::checkpoint {

// Every failure to read or write a file: the message names the path and says what went wrong.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Writes `object` to `path` as torch.save would (pickle protocol 2, tensors as storages through
// torch._utils._rebuild_tensor_v2). Tensors on other devices are copied to the CPU; views keep sharing their storage.
void save(const Value& object, const std::string& path);

// Reads a file written by save() or by Python's torch.save, refusing any pickle global or opcode that
// weights_only=True would refuse; tensors are placed on `map_location`.
Value load(const std::string& path, const c10::Device& map_location = c10::Device(c10::kCPU));

}  // namespace ddprun::checkpoint
