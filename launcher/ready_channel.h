// Where the ranks tell ddprun that they catch their preemption signals, and that they are aborting the job: an
// abstract Unix datagram socket (ddprun/launch_contract.h: kEnvReadySocket). Until rank 0 reports there, ddprun holds
// SIGUSR1/SIGUSR2 back, since a rank that is still loading its libraries would be killed by them. Abstract sockets
// belong to the network namespace, so only processes on ddprun's node can report; only ones of ddprun's own user are
// believed.
#pragma once

#include <string>

namespace ddprun::launcher {

class ReadyChannel {
 public:
  // Opens the socket; on failure the channel is closed (fd() < 0) and ddprun falls back to its hold timeout.
  ReadyChannel();
  ~ReadyChannel();
  ReadyChannel(const ReadyChannel&) = delete;
  ReadyChannel& operator=(const ReadyChannel&) = delete;

  int fd() const { return fd_; }
  // "@ddprun-<pid>-<nonce>", the value of DDPRUN_READY_SOCKET; "" when closed.
  const std::string& address() const { return address_; }
  // What the datagrams waiting said (only those from processes of this user count).
  struct Reports {
    bool ready = false;      // rank 0: every rank catches its preemption signals
    bool aborting = false;   // a rank is about to abort the job
    bool preempted = false;  // a rank exits with kExitPreempted after an agreed preemption
  };
  // Reads every datagram waiting.
  Reports receive();

 private:
  int fd_ = -1;
  std::string address_;
};

}  // namespace ddprun::launcher
