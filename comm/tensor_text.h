// How collectives and tensors are named in messages: "float32[4, 6]", "1.5 MiB", "2 tensors: ...", "300 s".
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <string>
#include <vector>

namespace ddprun::comm {

// Python's names: float32, float16, bfloat16, int64, uint8, bool, ...
std::string dtype_name(at::ScalarType type);
// "float32[4, 6]" for one tensor; "3 tensors: float32[10], float32[10], int64[] (1.2 KiB)" for several, listing at
// most `max_listed` of them.
std::string describe_tensors(const std::vector<at::Tensor>& tensors, size_t max_listed = 4);
std::string describe_bytes(int64_t bytes);
std::string describe_duration(std::chrono::milliseconds duration);

// The shape check's verdict on every rank's signature of one collective (e.g. "allreduce sum float32[10]"): empty when
// they are all the same, else "<collective>: the ranks pass different collectives or tensors: rank 0: ...; rank 1:
// ...".
std::string signature_mismatch(const std::string& collective, const std::vector<std::string>& signatures);

}  // namespace ddprun::comm
