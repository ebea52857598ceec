// Saving a checkpoint while training goes on: the state is snapshotted into host memory (the only stall), then a
// background thread writes it with the same atomic protocol as save(). One write is in flight at a time.
#pragma once

#include "checkpoint/atomic_file.h"
#include "checkpoint/value.h"

#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace ddprun::checkpoint {

// A copy of `object` whose tensors live in host memory of their own: each storage is copied once (pinned memory for
// CUDA storages), and views keep their offsets and strides into the copy, so the file is the one save() would write.
// `staging` holds the host buffers: the i-th storage met is copied into staging[i] when that has its size (the same
// state saved again), else into a new buffer put there. Fresh memory costs page faults that can take longer than
// the copy itself, so reusing it is what makes a snapshot cheap.
Value snapshot_to_host(const Value& object, std::vector<at::Tensor>& staging);

class AsyncSaver {
 public:
  AsyncSaver() = default;
  ~AsyncSaver();  // waits for the write in flight; an error it met is lost unless wait() was called
  AsyncSaver(const AsyncSaver&) = delete;
  AsyncSaver& operator=(const AsyncSaver&) = delete;

  // Waits for the previous write (rethrowing its CheckpointError), snapshots `object` into host buffers kept from
  // the previous save when they fit, and returns while a thread saves the snapshot to paths[0] and then copies that
  // file to each further path, each atomically; then, if all went well, calls `on_saved` on that thread.
  void save(const Value& object, std::vector<std::string> paths, std::function<void()> on_saved = nullptr,
            WriteStageHook hook = nullptr);
  // Waits for the write in flight, if any; rethrows the CheckpointError it ended with.
  void wait();

 private:
  std::thread thread_;
  std::exception_ptr error_;
  std::vector<at::Tensor> staging_;  // the snapshot's host buffers, reused by the next save
};

}  // namespace ddprun::checkpoint
