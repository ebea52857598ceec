// AtomicFile: a temporary file next to the target, written, fsynced, renamed over the target, and the folder fsynced.
#include "checkpoint/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

namespace ddprun::checkpoint {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// fsyncs the folder that holds `path`, so that a rename into it survives a crash.
void sync_parent_folder(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open folder '" + folder + "': " + errno_text(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != ENOTSUP) {
    throw std::runtime_error("cannot fsync folder '" + folder + "': " + errno_text(err));
  }
}

constexpr size_t kBlock = 4096;                   // O_DIRECT's alignment of memory, offsets and lengths
constexpr size_t kBufferBytes = size_t{4} << 20;  // under 10% of the smallest file written directly

// Aligned buffers for direct writes, kept for the next file: fresh memory costs page faults on first touch.
std::mutex buffers_mutex;
std::vector<char*> free_buffers;

char* take_buffer() {
  {
    std::lock_guard<std::mutex> lock(buffers_mutex);
    if (!free_buffers.empty()) {
      char* b = free_buffers.back();
      free_buffers.pop_back();
      return b;
    }
  }
  void* b = nullptr;
  return ::posix_memalign(&b, kBlock, kBufferBytes) == 0 ? static_cast<char*>(b) : nullptr;
}

void give_back(char* buffer) {
  std::lock_guard<std::mutex> lock(buffers_mutex);
  if (free_buffers.size() < 2) {
    free_buffers.push_back(buffer);
  } else {
    std::free(buffer);
  }
}

std::string host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "host";
  return name;
}

// A lock on the whole file, held through this descriptor: one whose writer died is released with it.
flock whole_file(short type) {
  flock lock{};
  lock.l_type = type;
  lock.l_whence = SEEK_SET;
  return lock;
}

// For "<target>.tmp.<host>.<pid>" (or "<target>.tmp.<pid>"): the target's name, the host ("" in the old form) and
// pid; false for other names.
bool parse_temporary_name(const std::string& name, std::string& target, std::string& host, long& pid) {
  const size_t tmp = name.rfind(".tmp.");
  if (tmp == std::string::npos || tmp == 0) return false;
  target = name.substr(0, tmp);
  const std::string rest = name.substr(tmp + 5);
  const size_t dot = rest.rfind('.');
  const std::string digits = dot == std::string::npos ? rest : rest.substr(dot + 1);
  if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  host = dot == std::string::npos ? "" : rest.substr(0, dot);
  pid = std::stol(digits);
  return true;
}

// Whether the temporary file at `path` has no writer any more.
bool writer_is_gone(const std::string& path, const std::string& host, long pid) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return false;
  flock lock = whole_file(F_WRLCK);
  const int rc = ::fcntl(fd, F_OFD_GETLK, &lock);
  ::close(fd);
  if (rc == 0) return lock.l_type == F_UNLCK;  // nobody holds the writer's lock
  // No locks here: only a process of this host can be checked.
  return (host.empty() || host == host_name()) && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

}  // namespace

std::string AtomicFile::temporary_path(const std::string& path) {
  return path + ".tmp." + host_name() + "." + std::to_string(::getpid());
}

std::vector<StaleTemporary> remove_stale_temporaries(const std::string& folder,
                                                     const std::function<bool(const std::string& target)>& ours) {
  std::vector<StaleTemporary> removed;
  DIR* dir = ::opendir(folder.c_str());
  if (dir == nullptr) return removed;
  while (const dirent* entry = ::readdir(dir)) {
    std::string target, host;
    long pid = 0;
    if (!parse_temporary_name(entry->d_name, target, host, pid) || !ours(target)) continue;
    const std::string path = folder + "/" + entry->d_name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (!writer_is_gone(path, host, pid) || ::unlink(path.c_str()) != 0) continue;
    removed.push_back({path, static_cast<uint64_t>(st.st_size)});
  }
  ::closedir(dir);
  return removed;
}

const char* to_string(WriteStage stage) {
  switch (stage) {
    case WriteStage::Created:
      return "created";
    case WriteStage::Written:
      return "written";
    case WriteStage::Synced:
      return "synced";
    case WriteStage::Renamed:
      return "renamed";
    case WriteStage::FolderSynced:
      return "folder-synced";
  }
  return "?";
}

AtomicFile::AtomicFile(std::string path, WriteStageHook hook, size_t expected_bytes)
    : path_(std::move(path)), temp_(temporary_path(path_)), hook_(std::move(hook)) {
  const int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW;
  if (expected_bytes >= kDirectMinBytes) {
    fd_ = ::open(temp_.c_str(), flags | O_DIRECT, 0666);
    if (fd_ >= 0) {
      buffer_ = take_buffer();
      if (buffer_ == nullptr) {  // no memory for the buffer: write through the page cache instead
        ::close(fd_);
        fd_ = -1;
      }
    }
  }
  if (fd_ < 0) fd_ = ::open(temp_.c_str(), flags, 0666);  // the file system refused O_DIRECT (tmpfs), or small
  if (fd_ < 0) throw std::runtime_error("cannot create '" + temp_ + "': " + errno_text(errno));
  // Held until the file is closed: remove_stale_temporaries leaves a locked file alone (a file system without locks
  // refuses this; the host and pid in the name stand in for it then).
  flock lock = whole_file(F_WRLCK);
  (void)::fcntl(fd_, F_OFD_SETLK, &lock);
  stage(WriteStage::Created);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());
  if (buffer_ != nullptr) give_back(buffer_);
}

void AtomicFile::stage(WriteStage s) const {
  if (hook_) hook_(s);
}

void AtomicFile::write_through(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (error_ == 0 && size > 0) {
    const ssize_t w = ::write(fd_, p, size);
    if (w < 0) {
      if (errno != EINTR) error_ = errno;
      continue;
    }
    if (w == 0) error_ = EIO;
    p += w;
    size -= static_cast<size_t>(w);
    written_ += static_cast<size_t>(w);
  }
}

void AtomicFile::write(const void* data, size_t size) {
  if (!direct()) return write_through(data, size);
  const char* p = static_cast<const char*>(data);
  while (error_ == 0 && size > 0) {
    const size_t n = std::min(size, kBufferBytes - buffered_);
    std::memcpy(buffer_ + buffered_, p, n);
    buffered_ += n;
    p += n;
    size -= n;
    if (buffered_ == kBufferBytes) flush_buffer(false);
  }
}

void AtomicFile::flush_buffer(bool last) {
  // Whole blocks only; the last write is padded to a block and the file cut back to its length.
  const size_t length = buffered_;
  const size_t blocks = last ? (length + kBlock - 1) / kBlock * kBlock : length / kBlock * kBlock;
  if (blocks > length) std::memset(buffer_ + length, 0, blocks - length);
  const size_t file_end = written_ + length;
  write_through(buffer_, blocks);
  if (last) {
    if (error_ == 0 && ::ftruncate(fd_, static_cast<off_t>(file_end)) != 0) error_ = errno;
    written_ = file_end;
    buffered_ = 0;
    return;
  }
  std::memmove(buffer_, buffer_ + blocks, length - blocks);
  buffered_ = length - blocks;
}

void AtomicFile::commit() {
  if (direct() && buffered_ > 0) flush_buffer(true);
  if (error_ != 0) throw std::runtime_error("cannot write '" + temp_ + "': " + errno_text(error_));
  stage(WriteStage::Written);
  if (::fsync(fd_) != 0) throw std::runtime_error("cannot fsync '" + temp_ + "': " + errno_text(errno));
  // A second descriptor keeps the lock (it belongs to the open file) until the rename: a start that removes stale
  // temporary files meanwhile leaves this one alone.
  const int lock_holder = ::dup(fd_);
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    const int err = errno;
    if (lock_holder >= 0) ::close(lock_holder);
    throw std::runtime_error("cannot close '" + temp_ + "': " + errno_text(err));
  }
  stage(WriteStage::Synced);
  const int renamed = ::rename(temp_.c_str(), path_.c_str());
  const int rename_error = errno;
  if (lock_holder >= 0) ::close(lock_holder);
  if (renamed != 0) throw std::runtime_error("cannot rename '" + temp_ + "' over it: " + errno_text(rename_error));
  committed_ = true;
  stage(WriteStage::Renamed);
  sync_parent_folder(path_);
  stage(WriteStage::FolderSynced);
}

}  // namespace ddprun::checkpoint
