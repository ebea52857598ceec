// The backend choice: --backend auto|mpi|nccl and the device decide whether NCCL runs on top of MPI.
#include "comm/factory.h"

#include <stdexcept>

namespace ddprun::comm {

Backend parse_backend(const std::string& name) {
  if (name == "auto") return Backend::Auto;
  if (name == "mpi") return Backend::Mpi;
  if (name == "nccl") return Backend::Nccl;
  throw std::invalid_argument("unknown backend '" + name + "'; choose auto, mpi or nccl");
}

const char* to_string(Backend backend) {
  switch (backend) {
    case Backend::Auto:
      return "auto";
    case Backend::Mpi:
      return "mpi";
    case Backend::Nccl:
      return "nccl";
  }
  return "?";
}

bool uses_nccl(Backend backend, c10::DeviceType device) {
  return backend == Backend::Nccl ||
         (backend == Backend::Auto && device == c10::DeviceType::CUDA && nccl_compiled_in());
}

std::unique_ptr<Communicator> make_communicator(Backend backend, c10::DeviceType device, const CommOptions& options) {
  std::unique_ptr<Communicator> mpi = make_mpi_communicator(options);
  if (!uses_nccl(backend, device)) return mpi;
  return make_nccl_communicator(std::move(mpi), options);
}

}  // namespace ddprun::comm
