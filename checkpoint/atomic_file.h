// Writing a file so that a crash at any instant leaves either the old file or the new one, never a torn one: the
// bytes go to a temporary file in the same folder, which is fsynced, renamed over the target, and the folder fsynced.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ddprun::checkpoint {

// The points an atomic write passes, in order. A crash before Renamed leaves the old file (and a stray temporary);
// from Renamed on, the new one.
enum class WriteStage { Created, Written, Synced, Renamed, FolderSynced };
const char* to_string(WriteStage stage);

// Called after each stage; fault-injection tests end the process there to check that the target survives.
using WriteStageHook = std::function<void(WriteStage)>;

// Large files are written with direct I/O (O_DIRECT) through an aligned buffer: the bytes go from that buffer to the
// disk without passing through the page cache, whose pages a write must first allocate and fill (on the VMs
// measured here that allocation, not the disk, bounded buffered writes; see scripts/bench/checkpoint.sh). Where
// the file system refuses O_DIRECT, writes are buffered.
class AtomicFile {
 public:
  // Creates temporary_path(path), holding a lock on it while it is written (see remove_stale_temporaries); throws
  // std::runtime_error naming it and the errno text if it cannot.
  // `expected_bytes`: about how large the file will be; from kDirectMinBytes on it is written with direct I/O.
  explicit AtomicFile(std::string path, WriteStageHook hook = nullptr, size_t expected_bytes = 0);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends bytes. The first error is kept and reported by commit(), so writers that cannot take an exception (a
  // zip writer's callback) can call this freely.
  void write(const void* data, size_t size);
  // fsync, close, rename over the target, fsync the folder. Throws std::runtime_error with the step and the errno
  // text; the target is then unchanged.
  void commit();

  const std::string& path() const { return path_; }
  // "<path>.tmp.<host>.<pid>": whose it is, in a folder that several nodes share. The writer's lock on it lasts until
  // it is renamed over the target.
  static std::string temporary_path(const std::string& path);
  bool direct() const { return buffer_ != nullptr; }

  static constexpr size_t kDirectMinBytes = size_t{64} << 20;

 private:
  void stage(WriteStage s) const;
  void write_through(const void* data, size_t size);  // straight to fd_ (buffered mode, or whole aligned blocks)
  void flush_buffer(bool last);                       // direct mode: writes the buffer's whole blocks (all, if last)

  std::string path_, temp_;
  WriteStageHook hook_;
  int fd_ = -1;
  int error_ = 0;  // the first errno a write met
  bool committed_ = false;
  char* buffer_ = nullptr;  // direct mode: kBufferBytes, aligned to kBlock
  size_t buffered_ = 0;     // bytes in buffer_
  size_t written_ = 0;      // bytes of the file written to fd_
};

// A temporary file whose writer is gone (killed mid-write: kill -9, a single SIGTERM, a node crash), as
// remove_stale_temporaries found and removed it.
struct StaleTemporary {
  std::string path;
  uint64_t bytes = 0;
};

// Removes the temporary files of AtomicFile's naming in `folder` ("<name>.tmp.<host>.<pid>", and "<name>.tmp.<pid>"
// of earlier versions) whose writer is gone: no process holds the lock a writer keeps on its file (OFD locks, which
// NFS and Lustre pass on); where the file system has no locks, those of this host whose process has exited.
// A file being written stays. Returns what it removed; a file it cannot remove is left, silently.
// Only the temporary files of targets `ours` accepts (by the target's file name) are considered: another program's
// "notes.tmp.1" in the same folder is not ours to remove.
std::vector<StaleTemporary> remove_stale_temporaries(const std::string& folder,
                                                     const std::function<bool(const std::string& target)>& ours);

}  // namespace ddprun::checkpoint
