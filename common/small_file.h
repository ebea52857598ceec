// Reading a small text file that a flag names (a hostfile, a config file): it must be a regular file (not a folder,
// a device such as /dev/zero, a pipe or a socket) of at most `max_bytes`, so that no flag can make a program read
// without end or silently read nothing. Header-only, for the launcher (which links nothing of the ranks' code) and
// the ranks alike.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>

namespace ddprun {

// The whole file. Throws std::invalid_argument "<what> '<path>' <what is wrong>; <hint>" otherwise.
inline std::string read_small_file(const std::string& path, size_t max_bytes, const std::string& what) {
  const std::string name = what + " '" + path + "'";
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below like any other non-file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw std::invalid_argument(name + " cannot be opened: " + std::strerror(errno) + "; check the path");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const bool folder = S_ISDIR(st.st_mode);
    ::close(fd);
    throw std::invalid_argument(name + (folder ? " is a folder" : " is not a regular file (a device, pipe or socket)") +
                                "; give the path of a file");
  }
  std::string text;
  char buffer[65536];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw std::invalid_argument(name + " cannot be read: " + std::strerror(err));
    }
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > max_bytes) {
      ::close(fd);
      throw std::invalid_argument(name + " is larger than " + std::to_string(max_bytes >> 10) +
                                  " KiB, far more than such a file needs; check the path");
    }
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return text;
}

}  // namespace ddprun
