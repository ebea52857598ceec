// Multi-rank tests of DistributedDataParallel: N ranks with b samples each produce the gradients and, after several
// steps, the weights of one process with all N*b samples, for mnist_cnn, mlp and resnet18 and every bucket size from
// one parameter per bucket to one bucket; gradient accumulation with no_sync; fp16/bf16 on the wire; unused
// parameters; buffers; mismatched models.
#include "comm/communicator.h"
#include "engine/distributed_data_parallel.h"
#include "trainer/host_memory.h"
#include "trainer/models.h"

#include <ATen/ops/full.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <algorithm>
#include <memory>
#include <string>

using namespace ddprun::engine;
using ddprun::trainer::keep_freed_host_memory;
using ddprun::trainer::make_model;
using ddprun::trainer::Model;

namespace {
ddprun::comm::Communicator& comm() {
  // As ddptrain does: freed memory stays for reuse (mlp's 80 MB tensors would otherwise be page-faulted afresh).
  static const std::string memory_policy = keep_freed_host_memory();
  static std::unique_ptr<ddprun::comm::Communicator> instance = ddprun::comm::make_mpi_communicator();
  return *instance;
}

// The same images and labels on every rank: `steps` global batches of comm().size() * per_rank samples.
struct Data {
  at::Tensor images, labels;
};
Data global_batches(int steps, int per_rank) {
  torch::manual_seed(11);
  return {at::randn({steps, comm().size() * per_rank, 1, 28, 28}),
          at::randint(0, 10, {steps, comm().size() * per_rank})};
}

// A model as rank 0 would build it with this seed; other ranks start elsewhere (DDP must broadcast rank 0's).
std::shared_ptr<Model> build(const std::string& name, bool as_rank0) {
  torch::manual_seed(as_rank0 || comm().rank() == 0 ? 7 : 100 + comm().rank());
  auto model = make_model(name);
  model->eval();  // no dropout, BatchNorm with its running statistics: the gradient is a function of the data alone
  return model;
}
std::shared_ptr<Model> cnn(bool as_rank0) { return build("mnist_cnn", as_rank0); }

void expect_close(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, double rtol, double atol,
                  const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(a[i].allclose(b[i], rtol, atol))
        << what << " " << i << ": max difference " << (a[i] - b[i]).abs().max().item<double>();
}

// |a - b| / |b| for each tensor (Euclidean norms), at most `tolerance`: how compressed gradients are judged.
void expect_relative_error_below(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, double tolerance,
                                 const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double error = (a[i] - b[i]).norm().item<double>() / std::max(b[i].norm().item<double>(), 1e-12);
    EXPECT_LE(error, tolerance) << what << " " << i;
  }
}

std::vector<at::Tensor> grads(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> result;
  for (const at::Tensor& p : params) result.push_back(p.grad().clone());
  return result;
}

std::vector<at::Tensor> values(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> result;
  for (const at::Tensor& p : params) result.push_back(p.detach().clone());
  return result;
}

// Trains `steps` SGD steps with DDP (this rank's slice) and without (the whole batch), comparing as it goes.
// `relative_tolerance` > 0: gradients and weights are judged by their relative error instead of element by element.
void train_side_by_side(const std::string& name, DdpOptions options, int steps, double rtol, double atol,
                        double relative_tolerance = 0) {
  const int n = comm().size(), r = comm().rank(), per_rank = 3;
  auto model = build(name, false);
  DistributedDataParallel ddp(model, comm(), options);
  auto reference = build(name, true);
  expect_close(values(model->parameters()), values(reference->parameters()), 0, 0, "initial weight");
  // torch::optim's own zero_grad on DDP's gradients (it detaches them in place: they must not be autograd views).
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  torch::optim::SGD reference_sgd(reference->parameters(),
                                  torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  const Data data = global_batches(steps, per_rank);
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    sgd.zero_grad();
    ddp.before_forward();
    at::nll_loss(model->forward(data.images[step].narrow(0, r * per_rank, per_rank)),
                 data.labels[step].narrow(0, r * per_rank, per_rank))
        .backward();
    reference_sgd.zero_grad();
    at::nll_loss(reference->forward(data.images[step]), data.labels[step]).backward();
    if (relative_tolerance > 0) {
      expect_relative_error_below(grads(model->parameters()), grads(reference->parameters()), relative_tolerance,
                                  "gradient");
    } else {
      expect_close(grads(model->parameters()), grads(reference->parameters()), rtol, atol, "gradient");
    }
    sgd.step();
    reference_sgd.step();
  }
  if (relative_tolerance > 0) {
    expect_relative_error_below(values(model->parameters()), values(reference->parameters()), relative_tolerance,
                                "weight");
  } else {
    expect_close(values(model->parameters()), values(reference->parameters()), rtol, atol, "weight");
  }
  EXPECT_TRUE(ddp.buckets_rebuilt());
  (void)n;
}

// A model with a layer forward never uses, and a buffer.
struct TwoLayers : torch::nn::Module {
  explicit TwoLayers(int64_t out) {
    used = register_module("used", torch::nn::Linear(4, out));
    unused = register_module("unused", torch::nn::Linear(4, 3));
    stat = register_buffer("stat", at::full({2}, double(comm().rank())));
  }
  at::Tensor forward(const at::Tensor& x) { return used->forward(x); }
  torch::nn::Linear used{nullptr}, unused{nullptr};
  at::Tensor stat;
};
}  // namespace

// 1e-7 MB: one parameter per bucket; 0.05 MB: several small buckets; 25 MB: the default; 1e4 MB: one bucket after
// the small first one. Three steps for mnist_cnn; two (before and after the rebuild) for the larger models.
void every_bucket_size(const std::string& name, int steps) {
  for (double cap : {1e-7, 0.05, 25.0, 1e4}) {
    SCOPED_TRACE(name + ", bucket cap " + std::to_string(cap) + " MB");
    DdpOptions options;
    options.bucket_cap_mb = cap;
    train_side_by_side(name, options, steps, 1e-4, 1e-6);
  }
}

TEST(DistributedDataParallel, MnistCnnAtEveryBucketSizeEqualsOneProcessWithTheWholeBatch) {
  every_bucket_size("mnist_cnn", 3);
}

TEST(DistributedDataParallel, MlpAtEveryBucketSizeEqualsOneProcessWithTheWholeBatch) { every_bucket_size("mlp", 2); }

TEST(DistributedDataParallel, Resnet18AtEveryBucketSizeEqualsOneProcessWithTheWholeBatch) {
  every_bucket_size("resnet18", 2);  // BatchNorm in eval mode
}

TEST(DistributedDataParallel, BucketsHoldParametersInReverseOrderThenInTheOrderGradientsCame) {
  auto model = cnn(false);
  DdpOptions options;
  options.bucket_cap_mb = 1e-7;  // one parameter per bucket: the layout is the order
  DistributedDataParallel ddp(model, comm(), options);
  const size_t count = model->parameters().size();
  std::vector<std::vector<size_t>> layout = ddp.bucket_layout();
  ASSERT_EQ(layout.size(), count);
  for (size_t b = 0; b < count; ++b) EXPECT_EQ(layout[b], std::vector<size_t>{count - 1 - b});

  DdpOptions defaults;
  auto other = cnn(false);
  DistributedDataParallel two(other, comm(), defaults);
  // mnist_cnn: fc2's and fc1's bias fit the 1 MiB first bucket, fc1.weight (4.5 MiB) starts the second.
  ASSERT_EQ(two.bucket_layout().size(), 2u);
  EXPECT_EQ(two.bucket_layout()[0], (std::vector<size_t>{7, 6, 5}));
  EXPECT_FALSE(two.buckets_rebuilt());
}

TEST(DistributedDataParallel, NoSyncAccumulationEqualsOneLargeBatch) {
  const int r = comm().rank(), per_rank = 2;
  auto model = cnn(false);
  DistributedDataParallel ddp(model, comm(), DdpOptions{});
  auto reference = cnn(true);
  const Data data = global_batches(2, per_rank);  // two micro-batches per step
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    for (const at::Tensor& p : model->parameters()) p.mutable_grad().zero_();
    {
      auto no_sync = ddp.no_sync();
      (at::nll_loss(model->forward(data.images[0].narrow(0, r * per_rank, per_rank)),
                    data.labels[0].narrow(0, r * per_rank, per_rank)) /
       2)
          .backward();
    }
    (at::nll_loss(model->forward(data.images[1].narrow(0, r * per_rank, per_rank)),
                  data.labels[1].narrow(0, r * per_rank, per_rank)) /
     2)
        .backward();
    for (const at::Tensor& p : reference->parameters())
      if (p.grad().defined()) p.mutable_grad().zero_();
    at::nll_loss(reference->forward(data.images.flatten(0, 1)), data.labels.flatten(0, 1)).backward();
    expect_close(grads(model->parameters()), grads(reference->parameters()), 1e-4, 1e-6, "gradient");
  }
}

TEST(DistributedDataParallel, CompressedAllReduceStaysWithinHalfPrecision) {
  for (GradCompression compression : {GradCompression::Fp16, GradCompression::Bf16}) {
    DdpOptions options;
    options.compression = compression;
    // float16 keeps 11 significant bits, bfloat16 8, and the smallest gradients fall into float16's subnormals (no
    // loss scaling here): each gradient and weight tensor within 1% (fp16) and 5% (bf16) of the uncompressed one.
    // Measured on 3 ranks: fp16 0.5% at most.
    train_side_by_side("mnist_cnn", options, 2, 0, 0, compression == GradCompression::Fp16 ? 1e-2 : 5e-2);
  }
  EXPECT_THROW(parse_grad_compression("int8"), std::invalid_argument);
}

TEST(DistributedDataParallel, AnUnusedParameterIsReportedOrCountedAsZero) {
  const at::Tensor x = at::randn({5, 4});
  {
    auto model = std::make_shared<TwoLayers>(2);
    DistributedDataParallel ddp(model, comm(), DdpOptions{});
    try {
      ddp.before_forward();
      model->forward(x).sum().backward();
      FAIL() << "no error for a parameter without a gradient";
    } catch (const std::exception& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("parameter 'unused.weight' and 1 more got no gradient"), std::string::npos) << message;
      EXPECT_NE(message.find("DdpOptions::find_unused_parameters"), std::string::npos) << message;
    }
  }
  auto model = std::make_shared<TwoLayers>(2);
  DdpOptions options;
  options.find_unused_parameters = true;
  DistributedDataParallel ddp(model, comm(), options);
  for (int step = 0; step < 2; ++step) {  // before and after the rebuild
    ddp.before_forward();
    model->forward(x).sum().backward();
    EXPECT_TRUE(model->unused->weight.grad().equal(at::zeros({3, 4})));
    EXPECT_TRUE(
        model->used->bias.grad().equal(at::full({2}, 5.0 * (step + 1))));  // same x everywhere: the sum of 5 rows
  }
}

TEST(DistributedDataParallel, BuffersComeFromRankZeroBeforeEachForward) {
  auto model = std::make_shared<TwoLayers>(2);
  DistributedDataParallel ddp(model, comm(), DdpOptions{});
  EXPECT_TRUE(model->stat.equal(at::zeros({2})));  // at construction
  model->stat.fill_(double(comm().rank() + 5));
  ddp.before_forward();
  EXPECT_TRUE(model->stat.equal(at::full({2}, 5.0)));
}

TEST(DistributedDataParallel, RanksWithDifferentModelsStopWithTheFirstDifference) {
  const int last = comm().size() - 1;
  auto model = std::make_shared<TwoLayers>(comm().rank() == last ? 3 : 2);
  try {
    DistributedDataParallel ddp(model, comm(), DdpOptions{});
    FAIL() << "no error";
  } catch (const ddprun::UsageError& e) {
    EXPECT_EQ(e.failed_rank(), last);
    const std::string message = e.what();
    EXPECT_NE(message.find("rank " + std::to_string(last) +
                           " has other parameters than rank 0: 'used.weight "
                           "float32[3, 4]' where rank 0 has 'used.weight float32[2, 4]'"),
              std::string::npos)
        << message;
  }
}

// The module called directly, not through the wrapper's forward: with buffers on more than one rank, rank 0's did not
// reach the others, and the backward says so on every rank; without buffers nothing is lost.
TEST(DistributedDataParallel, ForwardOutsideTheWrapperWithBuffersIsAnError) {
  if (comm().size() < 2) GTEST_SKIP() << "one rank: nothing to broadcast";
  const at::Tensor x = at::randn({5, 4});
  auto model = std::make_shared<TwoLayers>(2);
  DdpOptions options;
  options.find_unused_parameters = true;
  DistributedDataParallel ddp(model, comm(), options);
  try {
    model->forward(x).sum().backward();
    FAIL() << "no error for a forward outside the wrapper";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("the module ran without the wrapper's forward"), std::string::npos)
        << e.what();
  }
  ddp.before_forward();
  model->forward(x).sum().backward();  // through the wrapper: fine
  auto plain = std::make_shared<torch::nn::LinearImpl>(4, 2);
  DistributedDataParallel no_buffers(plain, comm(), DdpOptions{});
  plain->forward(x).sum().backward();  // no buffers: nothing skipped
  SUCCEED();
}

// torch::optim's zero_grad (LibTorch 1.x: detach_ and zero_ in place on each .grad) keeps the gradients in their
// buckets, so the next backward still averages them.
TEST(DistributedDataParallel, TheOptimizersZeroGradKeepsGradientsInTheBuckets) {
  auto model = std::make_shared<torch::nn::LinearImpl>(4, 2);
  DistributedDataParallel ddp(model, comm(), DdpOptions{});
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1));
  for (int step = 0; step < 3; ++step) {
    sgd.zero_grad();
    const at::Tensor x = at::full({1, 4}, double(comm().rank() + 1));
    model->forward(x).sum().backward();
    // The average of the ranks' inputs: (1 + ... + n) / n.
    const double mean = (comm().size() + 1) / 2.0;
    EXPECT_TRUE(model->weight.grad().allclose(at::full({2, 4}, mean))) << "step " << step;
  }
}
