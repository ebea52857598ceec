// The ready channel's socket: bound to an abstract name, credentials passed with every datagram.
#include "launcher/ready_channel.h"

#include "ddprun/launch_contract.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>

namespace ddprun::launcher {

ReadyChannel::ReadyChannel() {
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  const int on = 1;
  uint64_t nonce = 0;
  try {
    nonce = std::random_device()();
  } catch (const std::exception&) {  // no entropy source: the time will do (the name only has to be unused)
    nonce = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  const std::string name = "ddprun-" + std::to_string(::getpid()) + "-" + std::to_string(nonce);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name.data(), name.size());  // sun_path[0] == 0: the abstract namespace
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (::setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0 ||
      ::bind(fd, reinterpret_cast<const sockaddr*>(&address), length) != 0) {
    ::close(fd);
    return;
  }
  fd_ = fd;
  address_ = "@" + name;
}

ReadyChannel::~ReadyChannel() {
  if (fd_ >= 0) ::close(fd_);
}

ReadyChannel::Reports ReadyChannel::receive() {
  Reports reports;
  while (fd_ >= 0) {
    char text[64];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    iovec data{text, sizeof text};
    msghdr message{};
    message.msg_iov = &data;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd_, &message, 0);
    if (n < 0) break;  // EAGAIN: nothing more waiting
    const cmsghdr* header = CMSG_FIRSTHDR(&message);
    if (header == nullptr || header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_CREDENTIALS) continue;
    ucred sender{};
    std::memcpy(&sender, CMSG_DATA(header), sizeof sender);
    if (sender.uid != ::getuid()) continue;
    const std::string said(text, static_cast<size_t>(n));
    reports.ready = reports.ready || said == kReadyMessage;
    reports.aborting = reports.aborting || said == kAbortingMessage;
    reports.preempted = reports.preempted || said == kPreemptedMessage;
  }
  return reports;
}

}  // namespace ddprun::launcher
