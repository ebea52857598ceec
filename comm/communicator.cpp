// What every backend shares: single-tensor conveniences and the names of reductions.
#include "comm/communicator.h"

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

WorkHandle Communicator::allreduce(const at::Tensor& tensor, ReduceOp op) {
  return allreduce(std::vector<at::Tensor>{tensor}, op);
}

WorkHandle Communicator::broadcast(const at::Tensor& tensor, int root) {
  return broadcast(std::vector<at::Tensor>{tensor}, root);
}

}  // namespace ddprun::comm
