// Multi-rank tests of how ddptrain keeps ranks in step: rank 0's weights reach every rank, and averaged gradients
// of N ranks with b samples each equal the gradient of one process with all N*b samples.
#include "comm/communicator.h"
#include "trainer/gradient_sync.h"
#include "trainer/models.h"

#include <gtest/gtest.h>
#include <torch/utils.h>

#include <ATen/ops/full.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>

#include <memory>

using namespace ddprun::trainer;

namespace {
ddprun::comm::Communicator& comm() {
  static std::unique_ptr<ddprun::comm::Communicator> instance = ddprun::comm::make_mpi_communicator();
  return *instance;
}
}  // namespace

TEST(GradientSync, EveryRankStartsFromRankZerosWeights) {
  torch::manual_seed(100 + comm().rank());  // a different initialization on every rank
  auto model = make_model("mnist_cnn");
  broadcast_from_rank0(model->parameters(), comm());
  for (const at::Tensor& p : model->parameters()) {
    at::Tensor from_zero = p.detach().clone();
    comm().broadcast(from_zero, 0);
    ASSERT_TRUE(p.detach().equal(from_zero));
  }
  torch::manual_seed(100);  // what rank 0 drew
  auto rank0_model = make_model("mnist_cnn");
  EXPECT_TRUE(model->parameters()[0].detach().equal(rank0_model->parameters()[0].detach()));
}

TEST(GradientSync, AveragesAndFillsInMissingGradients) {
  const int n = comm().size(), r = comm().rank();
  at::Tensor a = at::full({3, 2}, 0.0).requires_grad_(true), b = at::full({4}, 0.0).requires_grad_(true);
  a.mutable_grad() = at::full({3, 2}, double(r + 1));
  if (r == 0) b.mutable_grad() = at::full({4}, double(n));  // only rank 0 has a gradient for b
  average_gradients({a, b}, comm());
  EXPECT_TRUE(a.grad().allclose(at::full({3, 2}, (n + 1) / 2.0)));
  ASSERT_TRUE(b.grad().defined());
  EXPECT_TRUE(b.grad().allclose(at::full({4}, 1.0)));
}

TEST(GradientSync, ShardedBatchesGiveTheFullBatchGradient) {
  const int n = comm().size(), r = comm().rank(), per_rank = 4;
  torch::manual_seed(7);  // the same model and the same global batch on every rank
  auto model = make_model("mnist_cnn");
  model->eval();  // no dropout, so the gradient is a function of the data alone
  at::Tensor images = at::randn({n * per_rank, 1, 28, 28});
  at::Tensor labels = at::randint(0, 10, {n * per_rank});

  at::nll_loss(model->forward(images), labels).backward();
  std::vector<at::Tensor> full;
  for (const at::Tensor& p : model->parameters()) full.push_back(p.grad().clone());

  for (const at::Tensor& p : model->parameters()) p.mutable_grad().zero_();
  at::nll_loss(model->forward(images.narrow(0, r * per_rank, per_rank)), labels.narrow(0, r * per_rank, per_rank))
      .backward();
  average_gradients(model->parameters(), comm());
  const auto params = model->parameters();
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(params[i].grad().allclose(full[i], 1e-4, 1e-6)) << "parameter " << i;
}
