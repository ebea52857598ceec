// How the trainer's process manages host memory: freed tensor memory stays in the process for the next step
// instead of going back to the kernel (glibc would otherwise mmap and unmap every large tensor, and the page
// faults of touching fresh pages cost more than the arithmetic on them; scripts/bench/host_memory.sh measures it).
#pragma once

#include <string>

namespace ddprun::trainer {

// Call once at start-up, before tensors are allocated. Does nothing when the user set any of glibc's MALLOC_*
// tuning variables, or DDPRUN_HOST_MEMORY=default. Returns a short description of what it did, for the start-up log.
std::string keep_freed_host_memory();

}  // namespace ddprun::trainer
