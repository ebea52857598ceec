// Tests of the NCCL communicator. Without a GPU (or in a build without NCCL): asking for it fails on every rank with
// one line that says why and what to do. With one GPU per rank: what every rank sees after each collective on CUDA
// tensors (values depend on the rank, so runs with several GPUs check the exchange too).
#include "comm/communicator.h"
#include "comm/factory.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

using ddprun::comm::CommError;
using ddprun::comm::CommOptions;
using ddprun::comm::Communicator;
using ddprun::comm::ReduceOp;
using ddprun::comm::WorkHandle;

namespace {

Communicator& mpi() {
  static std::unique_ptr<Communicator> instance = ddprun::comm::make_mpi_communicator();
  return *instance;
}

// GPUs that LibTorch can use here (0 with a CPU-only LibTorch).
int torch_gpus() {
  if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) return 0;
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount();
}

// Whether every rank has a GPU of its own for NCCL: all ranks must agree, or those with one would wait in
// ncclCommInitRank for those without.
bool every_rank_has_a_gpu() {
  const bool mine = ddprun::comm::nccl_compiled_in() && mpi().local_rank() < torch_gpus();
  const std::vector<std::string> votes = mpi().allgather_bytes(mine ? "1" : "0");
  return std::all_of(votes.begin(), votes.end(), [](const std::string& v) { return v == "1"; });
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(NcclCommunicator, RefusesToStartWithoutAGpuAndSaysWhatToDo) {
  if (every_rank_has_a_gpu()) GTEST_SKIP() << "every rank has a GPU: the NcclOnGpu tests run instead";
  try {
    ddprun::comm::make_nccl_communicator(ddprun::comm::make_mpi_communicator(), CommOptions{});
    FAIL() << "make_nccl_communicator started without a GPU";
  } catch (const CommError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    if (!ddprun::comm::nccl_compiled_in()) {
      EXPECT_TRUE(contains(message, "this ddprun was built without NCCL")) << message;
      EXPECT_TRUE(contains(message, "--backend mpi")) << message;
    } else if (torch_gpus() == 0) {
      // No device at all (the CPU machines), or a device that this CPU-only LibTorch cannot use.
      EXPECT_TRUE(contains(message, "sees no CUDA device") || contains(message, "has no CUDA support")) << message;
      EXPECT_TRUE(contains(message, "--backend mpi")) << message;
    } else {
      // More ranks on this node than GPUs: every rank hears which rank has none.
      EXPECT_TRUE(contains(message, "has no GPU of its own")) << message;
    }
  }
}

TEST(NcclCommunicator, IsCompiledInExactlyWhenCMakeFoundCudaAndNccl) {
  EXPECT_EQ(ddprun::comm::nccl_compiled_in(), DDPRUN_CMAKE_FOUND_NCCL != 0)
      << "the build chose the wrong one of nccl_communicator.cpp and nccl_unavailable.cpp";
}

// One NCCL communicator (with the shape check on) for all tests of the suite, made and freed while MPI runs.
class NcclOnGpu : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!every_rank_has_a_gpu()) return;
    CommOptions options;
    options.check_shapes = true;
    options.timeout = std::chrono::seconds(120);
    nccl_ = ddprun::comm::make_nccl_communicator(ddprun::comm::make_mpi_communicator(options), options);
  }
  static void TearDownTestSuite() { nccl_.reset(); }
  void SetUp() override {
    if (!nccl_) GTEST_SKIP() << "needs a GPU on every rank, LibTorch with CUDA, and a build with NCCL";
  }

  static Communicator& comm() { return *nccl_; }
  static at::TensorOptions on_gpu(at::ScalarType type) {
    return at::TensorOptions().dtype(type).device(at::Device(at::kCUDA, nccl_->local_rank()));
  }
  static at::Tensor full(at::IntArrayRef sizes, double value, at::ScalarType type) {
    return at::full(sizes, value, on_gpu(type));
  }
  // The result as the host sees it, compared exactly (all values below are small integers).
  static bool holds(const at::Tensor& gpu, double value) {
    return gpu.cpu().equal(at::full(gpu.sizes(), value, at::TensorOptions().dtype(gpu.scalar_type())));
  }

  static inline std::unique_ptr<Communicator> nccl_;
};

TEST_F(NcclOnGpu, KnowsItsRankDeviceAndVersion) {
  EXPECT_EQ(comm().rank(), mpi().rank());
  EXPECT_EQ(comm().size(), mpi().size());
  EXPECT_EQ(comm().local_rank(), mpi().local_rank());
  const std::string name = comm().backend_name();
  EXPECT_EQ(name.rfind("nccl 2.", 0), 0u) << name;
  EXPECT_TRUE(contains(name, "cuda:" + std::to_string(comm().local_rank()))) << name;
  EXPECT_TRUE(contains(name, "CPU tensors over mpi")) << name;
  EXPECT_TRUE(comm().options().check_shapes);
}

TEST_F(NcclOnGpu, AllreduceSumAverageMaxMinForEachDtype) {
  const int n = comm().size(), r = comm().rank();
  for (at::ScalarType type : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble, at::kLong, at::kInt, at::kByte}) {
    SCOPED_TRACE(c10::toString(type));
    at::Tensor sum = full({5, 3}, r + 1, type), max = full({7}, 7 * r, type), min = full({7}, 7 * r + 2, type);
    WorkHandle a = comm().allreduce(sum, ReduceOp::Sum);
    WorkHandle b = comm().allreduce(max, ReduceOp::Max);
    WorkHandle c = comm().allreduce(min, ReduceOp::Min);
    a->wait();
    b->wait();
    c->wait();
    EXPECT_TRUE(holds(sum, n * (n + 1) / 2));
    EXPECT_TRUE(holds(max, 7 * (n - 1)));
    EXPECT_TRUE(holds(min, 2));
    if (at::isFloatingType(type)) {
      at::Tensor average = full({1000}, 2 * r, type);
      comm().allreduce(average, ReduceOp::Average)->wait();
      EXPECT_TRUE(holds(average, n - 1));
    } else {
      EXPECT_THROW(comm().allreduce(full({3}, 1, type), ReduceOp::Average), std::invalid_argument);
    }
  }
  EXPECT_THROW(comm().allreduce(full({3}, 1, at::kBool), ReduceOp::Sum), std::invalid_argument);
  EXPECT_THROW(comm().allreduce(full({3}, 1, at::kShort), ReduceOp::Sum), std::invalid_argument);
}

TEST_F(NcclOnGpu, AllreduceOfAListNonContiguousAndZeroSizeTensors) {
  const int n = comm().size(), r = comm().rank();
  at::Tensor matrix = full({4, 6}, r + 1, at::kFloat);
  at::Tensor transposed = matrix.t();  // non-contiguous view: the result must land in `matrix`
  at::Tensor strided = full({20}, 1, at::kDouble);
  at::Tensor every_other = strided.slice(0, 0, 20, 2);
  at::Tensor empty = at::empty({0, 3}, on_gpu(at::kFloat));
  at::Tensor scalar = full({}, 2, at::kLong);
  at::Tensor half = full({8}, 1, at::kHalf);
  comm().allreduce({transposed, every_other, empty, scalar, half}, ReduceOp::Sum)->wait();
  EXPECT_TRUE(holds(matrix, n * (n + 1) / 2));
  EXPECT_TRUE(holds(every_other, n));
  EXPECT_TRUE(holds(strided.slice(0, 1, 20, 2), 1));  // untouched between the elements
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_TRUE(holds(scalar, 2 * n));
  EXPECT_TRUE(holds(half, n));

  at::Tensor only_empty = at::empty({0}, on_gpu(at::kFloat));
  EXPECT_TRUE(comm().allreduce(only_empty, ReduceOp::Sum)->wait(std::chrono::seconds(60)));
}

TEST_F(NcclOnGpu, BroadcastFromEveryRootAnyDtype) {
  const int r = comm().rank();
  for (int root = 0; root < comm().size(); ++root) {
    SCOPED_TRACE(root);
    at::Tensor t = r == root ? at::arange(10, on_gpu(at::kFloat)) : at::zeros({10}, on_gpu(at::kFloat));
    at::Tensor flags = at::full({3}, r == root, on_gpu(at::kBool));
    at::Tensor matrix =
        r == root ? at::arange(12, on_gpu(at::kLong)).view({3, 4}) : at::zeros({3, 4}, on_gpu(at::kLong));
    at::Tensor column = matrix.select(1, 2);  // non-contiguous
    comm().broadcast({t, flags, column}, root)->wait();
    EXPECT_TRUE(t.cpu().equal(at::arange(10, at::kFloat)));
    EXPECT_TRUE(flags.all().item<bool>());
    EXPECT_TRUE(column.cpu().equal(at::arange(2, 12, 4, at::kLong)));
  }
  EXPECT_THROW(comm().broadcast(full({1}, 0, at::kFloat), comm().size()), std::invalid_argument);
}

TEST_F(NcclOnGpu, AllgatherIntoSeparateOutputsAndIntoSlicesOfOneTensor) {
  const int n = comm().size(), r = comm().rank();
  at::Tensor input = full({2, 3}, 10 * r + 1, at::kLong);

  std::vector<at::Tensor> separate;  // through the staging buffer, copied out by wait()
  at::Tensor backing = at::zeros({2, 3, n}, on_gpu(at::kLong));
  for (int i = 0; i < n; ++i) separate.push_back(backing.select(2, i));  // non-contiguous
  comm().allgather(separate, input)->wait();
  for (int i = 0; i < n; ++i) EXPECT_TRUE(holds(separate[i], 10 * i + 1)) << i;

  std::vector<at::Tensor> slices;  // laid end to end: NCCL writes into them directly
  at::Tensor gathered = at::zeros({n, 2, 3}, on_gpu(at::kLong));
  for (int i = 0; i < n; ++i) slices.push_back(gathered[i]);
  comm().allgather(slices, input)->wait();
  for (int i = 0; i < n; ++i) EXPECT_TRUE(holds(gathered[i], 10 * i + 1)) << i;

  std::vector<at::Tensor> empty_outputs;
  for (int i = 0; i < n; ++i) empty_outputs.push_back(at::empty({0}, on_gpu(at::kFloat)));
  comm().allgather(empty_outputs, at::empty({0}, on_gpu(at::kFloat)))->wait();

  std::vector<at::Tensor> too_many(n + 1, at::zeros({2, 3}, on_gpu(at::kLong)));
  EXPECT_THROW(comm().allgather(too_many, input), std::invalid_argument);
}

TEST_F(NcclOnGpu, ManyCollectivesInFlightWaitedInAnyOrder) {
  const int n = comm().size(), r = comm().rank();
  std::vector<at::Tensor> tensors;
  std::vector<WorkHandle> works;
  for (int i = 0; i < 64; ++i) {
    tensors.push_back(full({(1 << 16) * (i % 5) + 1}, r + i, at::kFloat));
    works.push_back(comm().allreduce(tensors.back(), i % 2 ? ReduceOp::Max : ReduceOp::Sum));
  }
  // Host waits out of order: the last first (then all before it have completed: one stream, issue order).
  ASSERT_TRUE(works.back()->wait(std::chrono::seconds(60)));
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(works[i]->completed()) << i;
  for (int i = 63; i >= 0; i -= 2) works[i]->wait();
  for (int i = 0; i < 64; i += 2) works[i]->wait();
  for (int i = 0; i < 64; ++i) {
    const double expected = i % 2 ? n - 1 + i : n * (n - 1) / 2 + n * i;
    EXPECT_TRUE(holds(tensors[i], expected)) << i;
  }
}

TEST_F(NcclOnGpu, WaitWithTimeoutBlocksUntilDoneAndTheCallerStreamIsOrdered) {
  const int n = comm().size();
  at::Tensor big = full({1 << 22}, 1, at::kFloat);  // 16 MiB
  WorkHandle work = comm().allreduce(big, ReduceOp::Sum);
  EXPECT_TRUE(work->wait(std::chrono::seconds(60)));
  EXPECT_TRUE(work->completed());
  EXPECT_TRUE(holds(big, n));

  // Work queued on the caller's stream before the collective is what the collective sees.
  at::Tensor t = full({1000}, 1, at::kFloat);
  t.mul_(3);
  comm().allreduce(t, ReduceOp::Sum)->wait();
  t.add_(1);  // after wait(): ordered after the collective on the caller's stream
  EXPECT_TRUE(holds(t, 3 * n + 1));

  // Non-contiguous: wait(timeout) makes the copy into the caller's tensor before it returns.
  at::Tensor matrix = full({64, 32}, 1, at::kFloat);
  EXPECT_TRUE(comm().allreduce(matrix.t(), ReduceOp::Sum)->wait(std::chrono::seconds(60)));
  EXPECT_TRUE(holds(matrix, n));
}

TEST_F(NcclOnGpu, TensorsDroppedBeforeTheCollectiveEndsAreKeptAlive) {
  const int n = comm().size();
  std::vector<WorkHandle> works;
  for (int i = 0; i < 16; ++i) works.push_back(comm().allreduce(full({1 << 18}, 1, at::kFloat), ReduceOp::Sum));
  // New tensors must not get the memory of those still being reduced.
  std::vector<at::Tensor> fresh;
  for (int i = 0; i < 16; ++i) fresh.push_back(full({1 << 18}, 5, at::kFloat));
  for (WorkHandle& w : works) EXPECT_TRUE(w->wait(std::chrono::seconds(60)));
  for (const at::Tensor& t : fresh) EXPECT_TRUE(holds(t, 5));
  at::Tensor after = full({4}, 1, at::kFloat);
  comm().allreduce(after, ReduceOp::Sum)->wait();
  EXPECT_TRUE(holds(after, n));
}

TEST_F(NcclOnGpu, BarrierAndCpuTensorsGoOverMpi) {
  const int n = comm().size(), r = comm().rank();
  EXPECT_TRUE(comm().barrier()->wait(std::chrono::seconds(60)));
  at::Tensor cpu = at::full({5}, double(r + 1), at::kFloat);
  comm().allreduce(cpu, ReduceOp::Sum)->wait();
  EXPECT_TRUE(cpu.equal(at::full({5}, n * (n + 1) / 2.0, at::kFloat)));
  at::Tensor cpu_root = at::full({3}, double(r), at::kDouble);
  comm().broadcast(cpu_root, 0)->wait();
  EXPECT_TRUE(cpu_root.equal(at::zeros({3}, at::kDouble)));
  const std::vector<std::string> bytes = comm().allgather_bytes(std::to_string(r));
  ASSERT_EQ(static_cast<int>(bytes.size()), n);
  for (int i = 0; i < n; ++i) EXPECT_EQ(bytes[i], std::to_string(i));

  EXPECT_THROW(comm().allreduce({at::ones({2}), full({2}, 1, at::kFloat)}, ReduceOp::Sum), std::invalid_argument);
}

TEST_F(NcclOnGpu, ShapeCheckNamesEachRanksTensorsInsteadOfExchangingThem) {
  const int n = comm().size(), r = comm().rank();
  at::Tensor same = full({5}, 1, at::kFloat);
  comm().allreduce(same, ReduceOp::Sum)->wait();
  EXPECT_TRUE(holds(same, n));
  if (n < 2) GTEST_SKIP() << "a mismatch needs a second rank";
  at::Tensor different = full({10 + (r == n - 1)}, 1, at::kFloat);
  try {
    comm().allreduce(different, ReduceOp::Sum)->wait();
    FAIL() << "no error";
  } catch (const CommError& e) {
    const std::string message = e.what();
    EXPECT_TRUE(contains(message, "the ranks pass different collectives or tensors")) << message;
    EXPECT_TRUE(contains(message, "rank 0: allreduce sum float32[10]")) << message;
    EXPECT_TRUE(contains(message, "rank " + std::to_string(n - 1) + ": allreduce sum float32[11]")) << message;
  }
  // The communicator is still usable: nothing was exchanged.
  comm().allreduce(same, ReduceOp::Sum)->wait();
  EXPECT_TRUE(holds(same, n * n));
}
