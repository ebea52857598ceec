// Sending the ready report: one datagram to the abstract socket ddprun named.
#include "comm/ready_report.h"

#include "ddprun/launch_contract.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace ddprun::comm {

void report_ranks_ready() {
  const char* name = std::getenv(kEnvReadySocket);
  if (name == nullptr || name[0] != '@') return;
  const size_t length = std::strlen(name + 1);
  sockaddr_un address{};
  if (length == 0 || length + 1 > sizeof address.sun_path) return;
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name + 1, length);  // sun_path[0] == 0: the abstract namespace
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  const auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + length);
  const ssize_t sent = ::sendto(fd, kReadyMessage, std::strlen(kReadyMessage), MSG_NOSIGNAL,
                                reinterpret_cast<const sockaddr*>(&address), size);
  (void)sent;  // a hint: ddprun falls back to its hold time when it does not arrive
  ::close(fd);
}

}  // namespace ddprun::comm
