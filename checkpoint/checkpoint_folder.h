// The checkpoints of a run's folder, kept as ddptrain and the library's CheckpointManager keep them:
// checkpoint.pth (the newest, also mid-epoch) and model_<epoch>.pth after each epoch; choosing the newest that every
// rank can load (--resume auto), and keeping only the last N per-epoch files.
#pragma once

#include "comm/communicator.h"

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace ddprun::checkpoint {

class CheckpointFolder {
 public:
  explicit CheckpointFolder(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }
  std::string newest() const { return path_ + "/checkpoint.pth"; }
  std::string for_epoch(int64_t epoch) const { return path_ + "/model_" + std::to_string(epoch) + ".pth"; }
  // The model_<epoch>.pth files present, highest epoch first.
  std::vector<std::pair<int64_t, std::string>> epoch_files() const;
  // checkpoint.pth (when present), then the epoch files from the highest epoch down.
  std::vector<std::string> newest_first() const;
  // Removes all but the `keep` newest epoch files (0: keeps all); a file that cannot be removed is a warning on
  // stderr, prefixed with `program` ("ddptrain").
  void keep_last(int keep, const std::string& program) const;
  // Whether `name` (a file name, no folder) is one this folder's checkpoints are written as: checkpoint.pth,
  // model_<epoch>.pth, or the write check's probe.
  static bool is_checkpoint_name(const std::string& name);
  static constexpr const char* kWriteProbe = ".ddprun-write-check";

 private:
  std::string path_;
};

// Resuming the newest file, on every rank together: tries rank 0's listing of `folder`, newest first, with `load`,
// which must run on every rank and throw comm::CollectiveFailure on every rank when any fails; each newer file that
// fails is named in a warning on rank 0 ("<program>: warning: <call>: skipping a newer file: ..."). Returns the
// path loaded, or "" when the folder holds none. When none of them loads, throws comm::CollectiveFailure on every
// rank (exit code 3) naming `folder_name` (how the user gave the folder: "--output-dir"). `call` is how the user
// asked for it ("--resume auto", "CheckpointManager::resume_auto()").
std::string load_newest(comm::Communicator& comm, const CheckpointFolder& folder, const std::string& program,
                        const std::string& folder_name, const std::string& call,
                        const std::function<void(const std::string& path)>& load);

}  // namespace ddprun::checkpoint
