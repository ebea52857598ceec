// What every backend shares: the single-tensor conveniences.
#include "comm/communicator.h"

namespace ddprun::comm {

void Communicator::allreduce(at::Tensor& tensor, ReduceOp op) {
  std::vector<at::Tensor> tensors{tensor};
  allreduce(tensors, op);
}

void Communicator::broadcast(at::Tensor& tensor, int root) {
  std::vector<at::Tensor> tensors{tensor};
  broadcast(tensors, root);
}

}  // namespace ddprun::comm
