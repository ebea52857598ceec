// Keeping the ranks' copies of a model in step: every rank starts from rank 0's parameters and buffers, and after
// each backward every rank holds the average of all ranks' gradients (the simple version: one all-reduce of all
// gradients after backward; the bucketed engine that overlaps with backward replaces it).
#pragma once

#include "comm/communicator.h"

#include <ATen/core/Tensor.h>

#include <vector>

namespace ddprun::trainer {

// Copies rank 0's values into every rank's tensors (parameters and buffers, in the same order on every rank).
void broadcast_from_rank0(const std::vector<at::Tensor>& tensors, comm::Communicator& comm);

// Replaces every parameter's gradient by its average over all ranks, in one all-reduce of a flat buffer. A
// parameter without a gradient counts as zero (and gets the averaged gradient).
void average_gradients(const std::vector<at::Tensor>& params, comm::Communicator& comm);

}  // namespace ddprun::trainer
