// ddprun::ProcessGroup and init_process_group: the one start-up path of every ddprun program (ddptrain's too): MPI,
// the launch check, the rank's device, NCCL on top for a GPU rank; and the collectives the public API offers.
#include "ddprun/process_group.h"

#include "comm/agreement.h"
#include "comm/communicator.h"
#include "comm/factory.h"
#include "comm/launch_environment.h"
#include "ddprun/errors.h"
#include "engine/first_difference.h"
#include "library/access.h"
#include "library/current_group.h"

#include <torch/cuda.h>

#include <cmath>
#include <exception>
#include <stdexcept>

namespace ddprun {

struct ProcessGroup::Impl {
  std::unique_ptr<comm::Communicator> comm;
  c10::Device device{c10::kCPU};
  LaunchInfo launch;
  std::string program;
};

std::string LaunchInfo::describe() const {
  std::string text = launcher.empty() ? "started by hand" : "started by " + launcher;
  if (ddprun_restarts > 0) text += ", ddprun restart " + std::to_string(ddprun_restarts);
  if (slurm_requeues > 0) text += ", Slurm requeue " + std::to_string(slurm_requeues);
  return text;
}

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) { library::set_current_group(this); }
ProcessGroup::~ProcessGroup() {
  library::clear_current_group(this);
  if (std::uncaught_exceptions() > 0 && impl_ && impl_->comm && impl_->comm->size() > 1)
    library::keep_unwound_communicator(std::move(impl_->comm));
}

int ProcessGroup::rank() const { return impl_->comm->rank(); }
int ProcessGroup::world_size() const { return impl_->comm->size(); }
int ProcessGroup::local_rank() const { return impl_->comm->local_rank(); }
int ProcessGroup::local_size() const { return impl_->comm->local_size(); }
c10::Device ProcessGroup::device() const { return impl_->device; }
std::string ProcessGroup::backend_name() const { return impl_->comm->backend_name(); }
LaunchInfo ProcessGroup::launch() const { return impl_->launch; }
const std::string& ProcessGroup::program() const { return impl_->program; }

namespace {

comm::ReduceOp to_comm(ReduceOp op) {
  static constexpr comm::ReduceOp kOps[] = {comm::ReduceOp::Sum, comm::ReduceOp::Average, comm::ReduceOp::Max,
                                            comm::ReduceOp::Min};
  return kOps[static_cast<int>(op)];
}

}  // namespace

void ProcessGroup::all_reduce(const at::Tensor& tensor, ReduceOp op) {
  impl_->comm->allreduce(tensor, to_comm(op))->wait();
}

void ProcessGroup::all_reduce(const std::vector<at::Tensor>& tensors, ReduceOp op) {
  std::vector<comm::WorkHandle> works;
  for (const at::Tensor& t : tensors) works.push_back(impl_->comm->allreduce(t, to_comm(op)));
  for (auto& work : works) work->wait();
}

void ProcessGroup::broadcast(const at::Tensor& tensor, int root) { impl_->comm->broadcast(tensor, root)->wait(); }

void ProcessGroup::barrier() { impl_->comm->barrier()->wait(); }

std::vector<std::string> ProcessGroup::all_gather_string(const std::string& text) {
  return impl_->comm->allgather_bytes(text);
}

void ProcessGroup::run_on_every_rank(const std::function<void()>& step) { comm::run_on_all_ranks(*impl_->comm, step); }

void ProcessGroup::require_same_on_every_rank(const std::string& text, const std::string& what) {
  const std::vector<std::string> all = impl_->comm->allgather_bytes(text);
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    const auto [theirs, rank0s] = engine::first_different_lines(all[r], all[0]);
    // "name value" lines read as "name is A here but B on rank 0".
    std::string difference = "'" + theirs + "' where rank 0 has '" + rank0s + "'";
    const size_t a = theirs.rfind(' '), b = rank0s.rfind(' ');
    if (a != std::string::npos && b != std::string::npos && theirs.compare(0, a, rank0s, 0, b) == 0)
      difference =
          theirs.substr(0, a) + " is " + theirs.substr(a + 1) + " here but " + rank0s.substr(b + 1) + " on rank 0";
    throw SetUpError(
        "this rank's " + what + " differs from rank 0's: " + difference + "; make it the same on every rank",
        static_cast<int>(r));
  }
}

void ProcessGroup::abort(int exit_code) {
  impl_->comm->abort(exit_code);
  std::abort();  // not reached: the job ends above
}

comm::Communicator& LibraryAccess::communicator(ProcessGroup& group) { return *group.impl_->comm; }

ProcessGroup init_process_group(const ProcessGroupOptions& options) {
  library::set_program(options.program);
  comm::Backend backend;
  try {
    backend = comm::parse_backend(options.backend);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("ProcessGroupOptions::backend: ") + e.what());
  }
  if (!std::isfinite(options.timeout_seconds) || options.timeout_seconds > kMaxCommTimeoutSeconds ||
      (options.timeout_seconds < 0 && options.timeout_seconds != -1))
    throw UsageError(
        "ProcessGroupOptions::timeout_seconds must be -1 (the default), 0 (no limit) or up to 604800 "
        "seconds (a week)");
  if (options.check_collectives < -1 || options.check_collectives > 1)
    throw UsageError("ProcessGroupOptions::check_collectives must be -1 (DDPRUN_COMM_CHECK), 0 or 1");
  comm::CommOptions comm_options;
  try {
    comm_options = comm::comm_options_from_env();
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string(e.what()) + "; fix or unset it");
  }
  if (options.timeout_seconds >= 0)
    comm_options.timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_seconds * 1000));
  if (options.check_collectives >= 0) comm_options.check_shapes = options.check_collectives == 1;

  const comm::LaunchEnvironment launch = comm::read_launch_environment();
  auto impl = std::make_unique<ProcessGroup::Impl>();
  impl->launch = {launch.launcher, launch.ddprun_restarts, launch.slurm_requeues};
  impl->program = options.program;
  try {
    impl->comm = comm::make_mpi_communicator(comm_options);
    comm::check_launch_matches(launch, impl->comm->rank(), impl->comm->size());
  } catch (const Error& e) {
    throw SetUpError("rank " + std::to_string(launch.rank) + " cannot start the process group: " + e.what());
  }
  try {
    comm::run_on_all_ranks(*impl->comm, [&] {
      if (!torch::cuda::is_available()) return;
      const int index = comm::choose_device_index(launch, impl->comm->local_rank(), impl->comm->local_size(),
                                                  static_cast<int>(torch::cuda::device_count()));
      impl->device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
    });
    if (comm::uses_nccl(backend, impl->device.type()))
      impl->comm = comm::make_nccl_communicator(std::move(impl->comm), comm_options);
  } catch (const Error& e) {
    throw SetUpError(e.what(), e.on_every_rank() ? e.failed_rank() : -1);
  } catch (const std::exception& e) {
    throw SetUpError(comm::error_message(e));
  }
  return ProcessGroup(std::move(impl));
}

}  // namespace ddprun
