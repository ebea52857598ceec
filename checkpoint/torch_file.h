// Reading and writing the files Python's torch.save writes (a zip holding data.pkl and one record per storage),
// restricted to what torch.load(..., weights_only=True) accepts. Saving is atomic: a temporary file in the same
// folder is written, fsynced and renamed over the target, and the folder is fsynced.
#pragma once

#include "checkpoint/atomic_file.h"
#include "checkpoint/value.h"

#include <c10/core/Device.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ddprun::checkpoint {

// Every failure to read or write a file: the message names the path and says what went wrong.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where loaded storages go, like torch.load's map_location: by the location a storage was saved from ("cpu",
// "cuda:1"), an explicit device from the mapping, else the default device.
class MapLocation {
 public:
  MapLocation(c10::Device device = c10::Device(c10::kCPU)) : default_(device) {}  // NOLINT: a device maps everything
  // "cuda:1=cuda:0,cpu=cuda:0": storages saved from the left-hand location go to the right-hand device, the others
  // to `default_device`. Throws std::invalid_argument naming the bad part.
  static MapLocation parse(const std::string& mapping, c10::Device default_device);

  c10::Device device_for(const std::string& saved_location) const;
  std::string to_string() const;  // "cuda:1=cuda:0, others to cpu"

 private:
  c10::Device default_;
  std::vector<std::pair<c10::Device, c10::Device>> mapping_;
};

// Writes `object` to `path` as torch.save would (pickle protocol 2, tensors as storages through
// torch._utils._rebuild_tensor_v2), atomically (see atomic_file.h; `hook` sees each stage). Each storage is written
// from where it lies, a device storage through a CPU copy of that one storage: no second copy of the whole state.
// Views keep sharing their storage.
void save(const Value& object, const std::string& path, const WriteStageHook& hook = nullptr);

// save() to every path in one pass: the state is serialized once and each file is written from the same bytes, each
// atomically, committed in order (model_<epoch>.pth, then checkpoint.pth). A failure names the file it is about;
// the files committed before it stay.
void save_as(const Value& object, const std::vector<std::string>& paths, const WriteStageHook& hook = nullptr);

// Reads a file written by save() or by Python's torch.save, refusing any pickle global or opcode that
// weights_only=True would refuse, any record whose CRC-32 does not match, and any zip that torch.load would read
// differently (zip_directory.h). The zip directory is read and checked first, then every record is read once with
// pread through a small buffer and its CRC-32 checked (one sequential read, which leaves the file in the page cache),
// then the file is mapped privately: CPU storages point at their records there (a tensor written later gets private
// copies of the pages it writes, the file never changes), and no byte is copied into fresh memory by the load itself.
// A file written in place meanwhile is refused. data.pkl may take at
// most the memory budget of pickle_reader.h. Storages go to the device `map_location` gives for where each was saved.
// Throws CheckpointError naming the path.
Value load(const std::string& path, const MapLocation& map_location = MapLocation());

// The bytes of the checkpoint file at `path`, after the checks load() makes before it reads anything (a regular
// file whose zip directory is a torch.save one), as a uint8 tensor: what one rank reads to broadcast to the others.
// Throws CheckpointError naming the path.
at::Tensor read_checkpoint_bytes(const std::string& path);

// The same from the bytes of a whole file in memory (one rank read it and broadcast it); storages are copied out of
// `data`, which the caller may free afterwards. `name` is for messages.
Value load_from_memory(const void* data, size_t size, const std::string& name,
                       const MapLocation& map_location = MapLocation());

}  // namespace ddprun::checkpoint
