// ddprun::ProcessGroup: the MPI communicator (with NCCL on top for a GPU rank), the launch check and the device
// choice, as ddptrain makes them.
#include "ddprun/process_group.h"

#include "comm/agreement.h"
#include "comm/communicator.h"
#include "comm/factory.h"
#include "comm/launch_environment.h"

#include <torch/cuda.h>

#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace ddprun {

struct ProcessGroup::State {
  std::unique_ptr<comm::Communicator> comm;
  c10::Device device{c10::kCPU};
};

ProcessGroup::ProcessGroup(std::unique_ptr<State> state) : state_(std::move(state)) {}
ProcessGroup::~ProcessGroup() = default;

int ProcessGroup::rank() const { return state_->comm->rank(); }
int ProcessGroup::world_size() const { return state_->comm->size(); }
int ProcessGroup::local_rank() const { return state_->comm->local_rank(); }
int ProcessGroup::local_size() const { return state_->comm->local_size(); }
c10::Device ProcessGroup::device() const { return state_->device; }
comm::Communicator& ProcessGroup::communicator() { return *state_->comm; }

void ProcessGroup::all_reduce(const at::Tensor& tensor, ReduceOp op) {
  static constexpr comm::ReduceOp kOps[] = {comm::ReduceOp::Sum, comm::ReduceOp::Average, comm::ReduceOp::Max,
                                            comm::ReduceOp::Min};
  state_->comm->allreduce(tensor, kOps[static_cast<int>(op)])->wait();
}

void ProcessGroup::broadcast(const at::Tensor& tensor, int root) { state_->comm->broadcast(tensor, root)->wait(); }

void ProcessGroup::barrier() { state_->comm->barrier()->wait(); }

void ProcessGroup::abort(int exit_code) {
  state_->comm->abort(exit_code);
  std::abort();  // not reached: the job ends above
}

ProcessGroup init_process_group(const ProcessGroupOptions& options) {
  comm::Backend backend;
  try {
    backend = comm::parse_backend(options.backend);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("ProcessGroupOptions::backend: ") + e.what());
  }
  if (!std::isfinite(options.timeout_seconds) || options.timeout_seconds > comm::kMaxTimeoutSeconds)
    throw std::invalid_argument(
        "ProcessGroupOptions::timeout_seconds must be -1 (the default), 0 (no limit) or up to "
        "604800 seconds (a week)");
  comm::CommOptions comm_options = comm::comm_options_from_env();
  if (options.timeout_seconds >= 0)
    comm_options.timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_seconds * 1000));
  const comm::LaunchEnvironment launch = comm::read_launch_environment();
  auto state = std::make_unique<ProcessGroup::State>();
  state->comm = comm::make_mpi_communicator(comm_options);
  comm::check_launch_matches(launch, state->comm->rank(), state->comm->size());
  comm::run_on_all_ranks(*state->comm, [&] {
    if (!torch::cuda::is_available()) return;
    const int index = comm::choose_device_index(launch, state->comm->local_rank(), state->comm->local_size(),
                                                static_cast<int>(torch::cuda::device_count()));
    state->device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  });
  if (comm::uses_nccl(backend, state->device.type()))
    state->comm = comm::make_nccl_communicator(std::move(state->comm), comm_options);
  return ProcessGroup(std::move(state));
}

}  // namespace ddprun
