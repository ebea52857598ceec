// Choosing and starting a backend: MPI always (it starts the ranks and carries CPU tensors), NCCL on top of it for
// CUDA tensors when the device is a GPU or when asked for.
#pragma once

#include "comm/communicator.h"

#include <c10/core/DeviceType.h>

#include <memory>
#include <string>

namespace ddprun::comm {

enum class Backend { Auto, Mpi, Nccl };

// "auto", "mpi" or "nccl"; anything else throws std::invalid_argument naming the choices.
Backend parse_backend(const std::string& name);
const char* to_string(Backend backend);

// Whether this build contains the NCCL backend (CMake found CUDA and NCCL).
bool nccl_compiled_in();

// NCCL on cuda:<local rank>. Rank 0 creates the ncclUniqueId and broadcasts it through `bootstrap` (an MPI
// communicator), which also carries the collectives of CPU tensors and allgather_bytes. Throws CommError with one
// line when this build has no NCCL, or no GPU is visible to this rank.
std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> bootstrap,
                                                     const CommOptions& options);

// Whether a rank whose device is of type `device` runs NCCL: when asked for, or with Auto on a GPU in a build that
// has NCCL (without it, Auto keeps MPI, which copies CUDA tensors through the host).
bool uses_nccl(Backend backend, c10::DeviceType device);

// Starts MPI, then NCCL on top of it when uses_nccl(backend, device).
std::unique_ptr<Communicator> make_communicator(Backend backend, c10::DeviceType device, const CommOptions& options);

}  // namespace ddprun::comm
