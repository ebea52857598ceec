// broadcast_from_rank0 and average_gradients over a Communicator.
#include "trainer/gradient_sync.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/zeros.h>

#include <utility>

namespace ddprun::trainer {

void broadcast_from_rank0(const std::vector<at::Tensor>& tensors, comm::Communicator& comm) {
  std::vector<at::Tensor> detached;
  detached.reserve(tensors.size());
  for (const at::Tensor& t : tensors) detached.push_back(t.detach());
  comm.broadcast(std::move(detached), 0)->wait();
}

void average_gradients(const std::vector<at::Tensor>& params, comm::Communicator& comm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> flat_grads;
  flat_grads.reserve(params.size());
  for (const at::Tensor& p : params)
    flat_grads.push_back(p.grad().defined() ? p.grad().reshape(-1) : at::zeros({p.numel()}, p.options()));
  at::Tensor flat = at::cat(flat_grads);
  comm.allreduce(flat, comm::ReduceOp::Average)->wait();
  int64_t offset = 0;
  for (const at::Tensor& p : params) {
    at::Tensor slice = flat.narrow(0, offset, p.numel()).view_as(p);
    if (p.grad().defined()) {
      p.mutable_grad().copy_(slice);
    } else {
      p.mutable_grad() = slice.clone();
    }
    offset += p.numel();
  }
}

}  // namespace ddprun::trainer
