// What every backend shares: the single-tensor conveniences and the all-ranks agreement built on allreduce.
#include "comm/communicator.h"

#include <ATen/ops/full.h>

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
  return "unknown";
}

void Communicator::allreduce(at::Tensor& tensor, ReduceOp op) {
  std::vector<at::Tensor> tensors{tensor};
  allreduce(tensors, op);
}

void Communicator::broadcast(at::Tensor& tensor, int root) {
  std::vector<at::Tensor> tensors{tensor};
  broadcast(tensors, root);
}

bool Communicator::all_true(bool value) {
  at::Tensor flag = at::full({1}, value ? 1 : 0, at::kInt);
  allreduce(flag, ReduceOp::Min);
  return flag.item<int>() == 1;
}

}  // namespace ddprun::comm
