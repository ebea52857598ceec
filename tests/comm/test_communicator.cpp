// Multi-rank tests of the MPI communicator: what every rank sees after each collective.
#include "comm/agreement.h"
#include "comm/communicator.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <memory>

using ddprun::comm::Communicator;
using ddprun::comm::ReduceOp;

namespace {
Communicator& comm() {
  static std::unique_ptr<Communicator> instance = ddprun::comm::make_mpi_communicator();
  return *instance;
}
}  // namespace

TEST(Communicator, KnowsRankSizeAndLocalRank) {
  EXPECT_GE(comm().size(), 1);
  EXPECT_LT(comm().rank(), comm().size());
  // All ranks of a ctest run share this node.
  EXPECT_EQ(comm().local_size(), comm().size());
  EXPECT_EQ(comm().local_rank(), comm().rank());
  EXPECT_EQ(comm().backend_name(), "mpi");
}

TEST(Communicator, AllreduceSumAverageMaxMinOnFloatAndInt) {
  const int n = comm().size(), r = comm().rank();
  at::Tensor sum = at::full({5}, double(r + 1), at::kFloat);
  comm().allreduce(sum, ReduceOp::Sum);
  EXPECT_TRUE(sum.equal(at::full({5}, n * (n + 1) / 2.0, at::kFloat)));

  at::Tensor avg = at::full({3}, double(r), at::kDouble);
  comm().allreduce(avg, ReduceOp::Average);
  EXPECT_TRUE(avg.allclose(at::full({3}, (n - 1) / 2.0, at::kDouble)));

  at::Tensor mx = at::full({2}, int64_t(r * 7), at::kLong), mn = mx.clone();
  comm().allreduce(mx, ReduceOp::Max);
  comm().allreduce(mn, ReduceOp::Min);
  EXPECT_EQ(mx[0].item<int64_t>(), (n - 1) * 7);
  EXPECT_EQ(mn[1].item<int64_t>(), 0);
}

TEST(Communicator, AllreduceListNonContiguousAndHalf) {
  const int n = comm().size();
  at::Tensor matrix = at::ones({4, 6}, at::kFloat);
  at::Tensor column = matrix.t();  // non-contiguous view: the result must land in `matrix`
  at::Tensor half = at::ones({8}, at::kHalf);
  std::vector<at::Tensor> list{column, half};
  comm().allreduce(list, ReduceOp::Sum);
  EXPECT_TRUE(matrix.equal(at::full({4, 6}, double(n), at::kFloat)));
  EXPECT_TRUE(half.equal(at::full({8}, double(n), at::kHalf)));
}

TEST(Communicator, AverageOfIntegersIsRefused) {
  at::Tensor t = at::zeros({2}, at::kLong);
  EXPECT_THROW(comm().allreduce(t, ReduceOp::Average), std::invalid_argument);
}

TEST(Communicator, BroadcastFromEveryRoot) {
  for (int root = 0; root < comm().size(); ++root) {
    at::Tensor t = comm().rank() == root ? at::arange(10, at::kFloat) : at::zeros({10}, at::kFloat);
    at::Tensor flags = at::full({3}, comm().rank() == root, at::kBool);
    std::vector<at::Tensor> list{t, flags};
    comm().broadcast(list, root);
    EXPECT_TRUE(t.equal(at::arange(10, at::kFloat)));
    EXPECT_TRUE(flags.all().item<bool>());
  }
}

TEST(Communicator, AllgatherBytesOfDifferentLengths) {
  std::string mine(comm().rank() + 1, static_cast<char>('a' + comm().rank()));
  std::vector<std::string> all = comm().allgather_bytes(mine);
  ASSERT_EQ(static_cast<int>(all.size()), comm().size());
  for (int r = 0; r < comm().size(); ++r) EXPECT_EQ(all[r], std::string(r + 1, static_cast<char>('a' + r)));
}

TEST(Agreement, EveryRankLearnsTheLowestFailingRankAndItsMessage) {
  const int last = comm().size() - 1;
  EXPECT_NO_THROW(ddprun::comm::run_on_all_ranks(comm(), [] {}));
  try {
    ddprun::comm::run_on_all_ranks(comm(), [&] {
      if (comm().rank() == last) throw std::runtime_error("disk full on the last rank");
      if (comm().rank() == last + 1) throw std::runtime_error("never");
    });
    FAIL() << "no rank threw";
  } catch (const ddprun::comm::CollectiveFailure& failure) {
    EXPECT_EQ(failure.failed_rank(), last);
    EXPECT_STREQ(failure.what(), "disk full on the last rank");
  }
  comm().barrier();
}

TEST(Agreement, LibTorchErrorsLoseTheirBacktrace) {
  try {
    at::zeros({2}).view({3});
    FAIL() << "no error";
  } catch (const std::exception& e) {
    const std::string message = ddprun::comm::error_message(e);
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_NE(message.find("shape '[3]' is invalid"), std::string::npos) << message;
  }
}
