// A job in which the last rank never joins the second collective: the other ranks must end the job after the
// timeout (first argument, seconds) with a message naming the collective, its tensor and the missing rank.
#include "comm/communicator.h"

#include <ATen/ops/ones.h>

#include <chrono>
#include <cstdlib>
#include <thread>

int main(int argc, char** argv) {
  ddprun::comm::CommOptions options;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(std::atof(argc > 1 ? argv[1] : "2") * 1000));
  auto comm = ddprun::comm::make_mpi_communicator(options);
  comm->barrier()->wait();
  if (comm->rank() == comm->size() - 1) {
    std::this_thread::sleep_for(std::chrono::seconds(120));  // busy elsewhere, never joins
    return 0;
  }
  at::Tensor gradients = at::ones({1024}, at::kFloat);
  comm->allreduce(gradients, ddprun::comm::ReduceOp::Sum)->wait();
  return 0;  // not reached: the watchdog aborts the job
}
