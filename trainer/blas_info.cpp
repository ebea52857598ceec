// Finds the BLAS behind sgemm_ with dlsym/dladdr and names it by its resolved path (Debian's alternatives put the
// reference BLAS in .../blas/ and OpenBLAS in .../openblas-<variant>/).
#include "trainer/blas_info.h"

#include <dlfcn.h>

#include <climits>
#include <cstdlib>

namespace ddprun::trainer {

BlasInfo detect_blas() {
  BlasInfo info;
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  if (sgemm == nullptr) {
    info.name = "built into LibTorch (no external sgemm_)";
    return info;
  }
  Dl_info where{};
  if (dladdr(sgemm, &where) != 0 && where.dli_fname != nullptr) {
    char resolved[PATH_MAX];
    info.library_path = realpath(where.dli_fname, resolved) ? resolved : where.dli_fname;
  }
  const std::string& path = info.library_path;
  // Ask the library that provides sgemm_ itself: another BLAS (OpenBLAS pulled in by LAPACK, say) may be loaded too.
  using ConfigFn = char* (*)();
  ConfigFn config = nullptr;
  if (void* handle = where.dli_fname ? dlopen(where.dli_fname, RTLD_LAZY | RTLD_NOLOAD) : nullptr) {
    config = reinterpret_cast<ConfigFn>(dlsym(handle, "openblas_get_config"));
    dlclose(handle);
  }
  if (config != nullptr) {
    info.name = "OpenBLAS";
    info.detail = config();
  } else if (path.find("blis") != std::string::npos) {
    info.name = "BLIS";
  } else if (path.find("mkl") != std::string::npos) {
    info.name = "MKL";
  } else if (path.find("atlas") != std::string::npos) {
    info.name = "ATLAS";
  } else if (path.find("/blas/") != std::string::npos || path.find("libblas.so") != std::string::npos) {
    info.name = "reference BLAS";
    info.is_reference = true;
  } else {
    info.name = "unknown BLAS";
  }
  return info;
}

}  // namespace ddprun::trainer
