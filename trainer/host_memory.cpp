// glibc malloc tuning for a training process: large blocks come from the heap (no per-allocation mmap) and the heap
// is never trimmed, so each step reuses the pages of the step before.
#include "trainer/host_memory.h"

#include <malloc.h>

#include <cstdlib>

namespace ddprun::trainer {

std::string keep_freed_host_memory() {
  if (const char* mode = std::getenv("DDPRUN_HOST_MEMORY"); mode && std::string(mode) == "default")
    return "glibc defaults (DDPRUN_HOST_MEMORY=default)";
  for (const char* name : {"MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}) {
    if (std::getenv(name)) return std::string("left as set by ") + name;
  }
  const bool ok = mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
  return ok ? "freed memory kept for reuse" : "malloc tuning refused (not glibc?)";
}

}  // namespace ddprun::trainer
