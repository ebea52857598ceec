// The NCCL backend's stand-in for builds without CUDA/NCCL: it says so, and how to get one.
#include "comm/factory.h"

namespace ddprun::comm {

bool nccl_compiled_in() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> /*bootstrap*/,
                                                     const CommOptions& /*options*/) {
  throw CommError(
      "this ddprun was built without NCCL (CMake found no CUDA toolkit/nccl.h; rebuild with CUDAToolkit_ROOT/NCCL_ROOT "
      "set, or use --backend mpi)");
}

}  // namespace ddprun::comm
