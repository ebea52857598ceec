// libFuzzer target for the checkpoint reader: bytes that start like a zip go through load_from_memory (the zip
// container, the CRC-32 directory parser, the unpickler and the storage checks), anything else straight through
// read_pickle. Every input must end in a value or a std::exception, never a crash, a leak or undefined behaviour.
#include "checkpoint/pickle_reader.h"
#include "checkpoint/torch_file.h"

#include <ATen/ops/zeros.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ddprun::checkpoint;
  try {
    if (size >= 4 && std::memcmp(data, "PK\x03\x04", 4) == 0) {
      load_from_memory(data, size, "fuzz input");
    } else {
      read_pickle(data, size, [](const std::string&, const std::string&, c10::ScalarType dtype, int64_t numel) {
        if (numel > (1 << 20)) throw std::runtime_error("storage too large for the fuzzer");
        return at::zeros({numel}, dtype);
      });
    }
  } catch (const std::exception&) {
  }
  return 0;
}
