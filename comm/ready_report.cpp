// Sending the ready and aborting reports: one datagram each to the abstract socket ddprun named.
#include "comm/ready_report.h"

#include "ddprun/launch_contract.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace ddprun::comm {

namespace {

void send_to_ddprun(const char* message) {
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
  const ssize_t sent =
      ::sendto(fd, message, std::strlen(message), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&address), size);
  (void)sent;  // a hint: ddprun falls back to its hold time (or the launcher's own abort) when it does not arrive
  ::close(fd);
}

}  // namespace

void report_ranks_ready() { send_to_ddprun(kReadyMessage); }

void report_job_aborting() { send_to_ddprun(kAbortingMessage); }

void report_job_preempted() { send_to_ddprun(kPreemptedMessage); }

}  // namespace ddprun::comm
