// Which BLAS library LibTorch's matrix products run on in this process, found from the loaded sgemm_ symbol.
#pragma once

#include <string>

namespace ddprun::trainer {

struct BlasInfo {
  std::string name;           // "OpenBLAS", "reference BLAS", "BLIS", "MKL", ...
  std::string library_path;   // the resolved file that provides sgemm_, or empty when linked into LibTorch
  std::string detail;         // e.g. OpenBLAS's build configuration
  bool is_reference = false;  // Netlib's reference BLAS: correct but many times slower
};

BlasInfo detect_blas();

}  // namespace ddprun::trainer
