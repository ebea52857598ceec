// What every backend shares: single-tensor conveniences, names of reductions, options from the environment.
#include "comm/communicator.h"

#include <cstdlib>
#include <string>

namespace ddprun::comm {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Average:
      return "average";
    case ReduceOp::Max:
      return "max";
    case ReduceOp::Min:
      return "min";
  }
  return "?";
}

namespace {
// A non-negative number from the environment, or `fallback` when unset; a malformed value is an error.
double env_number(const char* name, double fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (*end != '\0' || value < 0)
    throw std::invalid_argument(std::string(name) + "=" + text + " is not a non-negative number");
  return value;
}

constexpr bool kDebugBuild =
#ifdef NDEBUG
    false;
#else
    true;
#endif
}  // namespace

CommOptions comm_options_from_env() {
  CommOptions options;
  options.timeout = std::chrono::milliseconds(
      static_cast<int64_t>(env_number("DDPRUN_COMM_TIMEOUT", options.timeout.count() / 1000.0) * 1000));
  options.check_shapes = env_number("DDPRUN_COMM_CHECK", kDebugBuild ? 1 : 0) != 0;
  options.segment_bytes =
      static_cast<int64_t>(env_number("DDPRUN_COMM_SEGMENT_BYTES", static_cast<double>(options.segment_bytes)));
  return options;
}

WorkHandle Communicator::allreduce(const at::Tensor& tensor, ReduceOp op) {
  return allreduce(std::vector<at::Tensor>{tensor}, op);
}

WorkHandle Communicator::broadcast(const at::Tensor& tensor, int root) {
  return broadcast(std::vector<at::Tensor>{tensor}, root);
}

}  // namespace ddprun::comm
