// Multi-rank tests of the MPI communicator (run on 1 to 4 ranks): what every rank holds after each collective, for
// every reduction and dtype, against values computed by hand; async handles; the shape check; refused arguments.
#include "comm/agreement.h"
#include "comm/communicator.h"
#include "comm/factory.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using ddprun::comm::CommError;
using ddprun::comm::CommOptions;
using ddprun::comm::Communicator;
using ddprun::comm::ReduceOp;
using ddprun::comm::WorkHandle;

namespace {
Communicator& comm() {
  static std::unique_ptr<Communicator> instance = ddprun::comm::make_mpi_communicator(CommOptions{});
  return *instance;
}

// A second communicator that cuts buffers into 4 KiB segments (small tensors are still packed, up to 256 KiB).
Communicator& segmented() {
  static std::unique_ptr<Communicator> instance = [] {
    CommOptions options;
    options.segment_bytes = 4096;
    return ddprun::comm::make_mpi_communicator(options);
  }();
  return *instance;
}

// Rank r holds (r + 1) * [1, 2, ..., 7].
at::Tensor ramp(at::ScalarType type, int rank) { return (at::arange(1, 8, at::kDouble) * (rank + 1)).to(type); }
}  // namespace

TEST(Communicator, KnowsRankSizeLocalRankAndThreadLevel) {
  EXPECT_GE(comm().size(), 1);
  EXPECT_LT(comm().rank(), comm().size());
  // All ranks of a ctest run share this node.
  EXPECT_EQ(comm().local_size(), comm().size());
  EXPECT_EQ(comm().local_rank(), comm().rank());
  EXPECT_EQ(comm().backend_name().rfind("mpi (MPI_THREAD_MULTIPLE", 0), 0u) << comm().backend_name();
}

TEST(Communicator, AllreduceEveryReductionAndDtypeMatchesHandComputedValues) {
  const int n = comm().size(), r = comm().rank();
  const at::Tensor base = at::arange(1, 8, at::kDouble);
  for (at::ScalarType type :
       {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kLong, at::kInt, at::kShort, at::kChar, at::kByte}) {
    SCOPED_TRACE(c10::toString(type));
    at::Tensor sum = ramp(type, r), max = ramp(type, r), min = ramp(type, r);
    comm().allreduce(sum, ReduceOp::Sum)->wait();
    comm().allreduce(max, ReduceOp::Max)->wait();
    comm().allreduce(min, ReduceOp::Min)->wait();
    EXPECT_TRUE(sum.equal((base * (n * (n + 1) / 2)).to(type)));
    EXPECT_TRUE(max.equal((base * n).to(type)));
    EXPECT_TRUE(min.equal(base.to(type)));
    if (at::isFloatingType(type)) {
      at::Tensor average = ramp(type, r);
      comm().allreduce(average, ReduceOp::Average)->wait();
      // 16-bit floats are divided before the sum (so it cannot overflow): within their rounding.
      const bool sixteen_bit = type == at::kHalf || type == at::kBFloat16;
      EXPECT_TRUE(average.to(at::kDouble).allclose(base * (n + 1) / 2.0, sixteen_bit ? 1e-2 : 1e-12, 0)) << average;
    }
  }
}

TEST(Communicator, AllreduceOfListsNonContiguousZeroSizeAndScalars) {
  const int n = comm().size();
  at::Tensor matrix = at::ones({4, 6}, at::kFloat);
  at::Tensor transposed = matrix.t();  // non-contiguous view: the result must land in `matrix`
  at::Tensor strided = at::ones({20}, at::kDouble);
  at::Tensor every_other = strided.slice(0, 0, 20, 2);
  at::Tensor empty = at::empty({0, 3}, at::kFloat);
  at::Tensor scalar = at::full({}, 2.0, at::kDouble);
  at::Tensor half = at::ones({8}, at::kHalf);
  comm().allreduce({transposed, every_other, empty, scalar, half}, ReduceOp::Sum)->wait();
  EXPECT_TRUE(matrix.equal(at::full({4, 6}, double(n), at::kFloat)));
  EXPECT_TRUE(every_other.equal(at::full({10}, double(n), at::kDouble)));
  EXPECT_TRUE(strided.slice(0, 1, 20, 2).equal(at::ones({10}, at::kDouble)));  // untouched between the elements
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(scalar.item<double>(), 2.0 * n);
  EXPECT_TRUE(half.equal(at::full({8}, double(n), at::kHalf)));
}

TEST(Communicator, SegmentedAndPackedBuffersGiveTheSameResults) {
  const int n = comm().size(), r = comm().rank();
  // 100 000 floats = 98 segments of 4 KiB; 50 small tensors in runs of one dtype, each run packed into one buffer.
  at::Tensor large = at::arange(100000, at::kFloat) * (r + 1);
  std::vector<at::Tensor> small;
  for (int i = 0; i < 50; ++i) {
    const at::ScalarType type = i < 17 ? at::kFloat : i < 34 ? at::kDouble : at::kHalf;
    small.push_back(at::full({i % 7 + 1, 3}, double(i * (r + 1)), type));
  }
  std::vector<at::Tensor> all = small;
  all.insert(all.begin() + 20, large);
  segmented().allreduce(all, ReduceOp::Average)->wait();
  const double mean_factor = (n + 1) / 2.0;
  EXPECT_TRUE(large.allclose(at::arange(100000, at::kFloat) * mean_factor));
  for (int i = 0; i < 50; ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(small[i].to(at::kDouble).allclose(at::full(small[i].sizes(), i * mean_factor, at::kDouble), 1e-2, 0));
  }
}

// Large buffers go through Open MPI's Rabenseifner all-reduce: each element is summed in a balanced tree over the
// ranks in rank order (pairs first when the count is not a power of two), so a job gets the same bits whatever its
// ranks' nodes (cluster_train_nodes checks 2 nodes x 2 ranks against 1 x 4). The values make the order visible.
TEST(Communicator, LargeSumsAddUpInABalancedTreeOverTheRanksWhateverTheNodes) {
  const int n = comm().size(), r = comm().rank();
  ASSERT_NE(comm().backend_name().find("Rabenseifner"), std::string::npos) << comm().backend_name();
  const int64_t count = CommOptions{}.tree_segment_bytes / 4 * 2 + 1000;  // two whole segments and a short one
  auto contribution = [count](int rank) {
    at::Tensor i = at::arange(count, at::kDouble);
    return ((i.remainder(5) - 2) * 3.0e7 + (rank + 1) * 0.37 + i * 1e-3 * (rank % 2 ? 1 : -1)).to(at::kFloat);
  };
  at::Tensor mine = contribution(r);
  comm().allreduce({mine}, ReduceOp::Sum)->wait();

  // By hand: the first 2 * extra ranks pair up, then a balanced tree over the power-of-two count left.
  int pow2 = 1;
  while (pow2 * 2 <= n) pow2 *= 2;
  const int extra = n - pow2;
  std::vector<at::Tensor> level;
  for (int i = 0; i < pow2; ++i)
    level.push_back(i < extra ? contribution(2 * i) + contribution(2 * i + 1) : contribution(i + extra));
  while (level.size() > 1) {
    std::vector<at::Tensor> next;
    for (size_t i = 0; i < level.size(); i += 2) next.push_back(level[i] + level[i + 1]);
    level = next;
  }
  EXPECT_TRUE(mine.equal(level[0])) << "max difference " << (mine - level[0]).abs().max().item<float>();
  if (n >= 3) {  // the values are such that another order gives other bits, or this test could not fail
    at::Tensor backwards = contribution(n - 1);
    for (int k = n - 2; k >= 0; --k) backwards = backwards + contribution(k);
    EXPECT_FALSE(backwards.equal(level[0]));
  }
}

TEST(Communicator, SegmentedSumOfIntegersAndBroadcastAndAllgather) {
  const int n = comm().size(), r = comm().rank();
  at::Tensor counts = at::full({30000}, int64_t(r + 1), at::kLong);
  segmented().allreduce(counts, ReduceOp::Sum)->wait();
  EXPECT_TRUE(counts.equal(at::full({30000}, int64_t(n * (n + 1) / 2), at::kLong)));

  at::Tensor weights = r == n - 1 ? at::arange(50000, at::kFloat) : at::zeros({50000}, at::kFloat);
  segmented().broadcast(weights, n - 1)->wait();
  EXPECT_TRUE(weights.equal(at::arange(50000, at::kFloat)));

  std::vector<at::Tensor> outputs;
  for (int i = 0; i < n; ++i) outputs.push_back(at::empty({3000}, at::kDouble));
  segmented().allgather(outputs, at::full({3000}, double(r), at::kDouble))->wait();
  for (int i = 0; i < n; ++i) EXPECT_TRUE(outputs[i].equal(at::full({3000}, double(i), at::kDouble)));
}

TEST(Communicator, BroadcastFromEveryRootAnyDtype) {
  for (int root = 0; root < comm().size(); ++root) {
    SCOPED_TRACE(root);
    at::Tensor t = comm().rank() == root ? at::arange(10, at::kFloat) : at::zeros({10}, at::kFloat);
    at::Tensor flags = at::full({3}, comm().rank() == root, at::kBool);
    at::Tensor matrix = comm().rank() == root ? at::arange(12, at::kLong).view({3, 4}) : at::zeros({3, 4}, at::kLong);
    at::Tensor column = matrix.select(1, 2);  // non-contiguous
    comm().broadcast({t, flags, column}, root)->wait();
    EXPECT_TRUE(t.equal(at::arange(10, at::kFloat)));
    EXPECT_TRUE(flags.all().item<bool>());
    EXPECT_TRUE(column.equal(at::arange(2, 12, 4, at::kLong)));
  }
}

TEST(Communicator, BroadcastAndAllgatherEveryDtype) {
  const int n = comm().size(), r = comm().rank();
  for (at::ScalarType type : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kLong, at::kInt, at::kShort,
                              at::kChar, at::kByte, at::kBool}) {
    SCOPED_TRACE(c10::toString(type));
    at::Tensor from_last = ramp(type, r == n - 1 ? 1 : 0);  // [2, 4, ..., 14] on the last rank, [1, ..., 7] elsewhere
    comm().broadcast(from_last, n - 1)->wait();
    EXPECT_TRUE(from_last.equal(ramp(type, 1)));
    std::vector<at::Tensor> outputs;
    for (int i = 0; i < n; ++i) outputs.push_back(at::zeros({7}, type));
    comm().allgather(outputs, ramp(type, r))->wait();
    for (int i = 0; i < n; ++i) EXPECT_TRUE(outputs[i].equal(ramp(type, i))) << i;
  }
}

TEST(Communicator, AllgatherIntoEveryRanksOutput) {
  const int n = comm().size(), r = comm().rank();
  std::vector<at::Tensor> outputs;
  at::Tensor backing = at::zeros({2, 3, n}, at::kLong);
  for (int i = 0; i < n; ++i) outputs.push_back(backing.select(2, i));  // non-contiguous outputs
  comm().allgather(outputs, at::full({2, 3}, int64_t(10 * r + 1), at::kLong))->wait();
  for (int i = 0; i < n; ++i) EXPECT_TRUE(outputs[i].equal(at::full({2, 3}, int64_t(10 * i + 1), at::kLong)));

  std::vector<at::Tensor> empty_outputs;
  for (int i = 0; i < n; ++i) empty_outputs.push_back(at::empty({0}, at::kFloat));
  comm().allgather(empty_outputs, at::empty({0}, at::kFloat))->wait();
}

TEST(Communicator, ManyCollectivesInFlightCompleteInIssueOrderWhateverOrderTheyAreWaitedIn) {
  const int n = comm().size(), r = comm().rank();
  std::vector<at::Tensor> tensors;
  std::vector<WorkHandle> works;
  for (int i = 0; i < 64; ++i) {
    tensors.push_back(at::full({1000 * (i % 5) + 1}, double(r + i), at::kDouble));
    works.push_back(comm().allreduce(tensors.back(), i % 2 ? ReduceOp::Max : ReduceOp::Sum));
  }
  // Compute while they run, then wait from the last to the first.
  const at::Tensor busy = at::mm(at::randn({200, 200}), at::randn({200, 200}));
  EXPECT_EQ(busy.size(0), 200);
  ASSERT_TRUE(works.back()->wait(std::chrono::seconds(60)));
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(works[i]->completed()) << i;  // issue order: all before it are done
  for (int i = 63; i >= 0; --i) {
    works[i]->wait();
    const double expected = i % 2 ? double(n - 1 + i) : double(n * (n - 1) / 2 + n * i);
    EXPECT_TRUE(tensors[i].equal(at::full(tensors[i].sizes(), expected, at::kDouble))) << i;
  }
  EXPECT_TRUE(comm().barrier()->wait(std::chrono::seconds(60)));
}

TEST(Communicator, WaitWithTimeoutReportsAnUnfinishedCollective) {
  if (comm().size() < 2) GTEST_SKIP() << "needs a second rank that arrives late";
  at::Tensor t = at::ones({4}, at::kFloat);
  // Rank 1 joins the all-reduce only after rank 0 has looked at it (a barrier on another communicator).
  if (comm().rank() == 1) segmented().barrier()->wait();
  WorkHandle work = comm().allreduce(t, ReduceOp::Sum);
  if (comm().rank() == 0) {
    EXPECT_FALSE(work->wait(std::chrono::milliseconds(50)));  // rank 1 has not joined yet
    EXPECT_FALSE(work->completed());
    segmented().barrier()->wait();
  } else if (comm().rank() > 1) {
    segmented().barrier()->wait();
  }
  EXPECT_TRUE(work->wait(std::chrono::seconds(60)));
  EXPECT_TRUE(t.equal(at::full({4}, double(comm().size()), at::kFloat)));
}

TEST(Communicator, ShapeCheckNamesEachRanksTensorsInsteadOfExchangingThem) {
  CommOptions options;
  options.check_shapes = true;
  std::unique_ptr<Communicator> checked = ddprun::comm::make_mpi_communicator(options);
  const int n = checked->size(), r = checked->rank();
  at::Tensor same = at::ones({5}, at::kFloat);
  checked->allreduce(same, ReduceOp::Sum)->wait();
  EXPECT_TRUE(same.equal(at::full({5}, double(n), at::kFloat)));
  if (n < 2) return;

  at::Tensor different = at::ones({10 + (r == n - 1)}, at::kFloat);
  try {
    checked->allreduce(different, ReduceOp::Sum)->wait();
    FAIL() << "no error";
  } catch (const CommError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("allreduce #2: the ranks pass different collectives or tensors"), std::string::npos)
        << message;
    EXPECT_NE(message.find("rank 0: allreduce sum float32[10]"), std::string::npos) << message;
    EXPECT_NE(message.find("rank " + std::to_string(n - 1) + ": allreduce sum float32[11]"), std::string::npos)
        << message;
  }
  // A rank calling broadcast where the others reduce: reported the same way, and the communicator goes on working.
  at::Tensor t = at::ones({3}, at::kFloat);
  WorkHandle mixed = r == 0 ? checked->broadcast(t, 0) : checked->allreduce(t, ReduceOp::Sum);
  EXPECT_THROW(mixed->wait(), CommError);
  checked->allreduce(same, ReduceOp::Sum)->wait();
  EXPECT_TRUE(same.equal(at::full({5}, double(n * n), at::kFloat)));
}

TEST(Communicator, RefusesWhatItCannotDoWhenIssued) {
  at::Tensor integers = at::zeros({2}, at::kLong);
  EXPECT_THROW(comm().allreduce(integers, ReduceOp::Average), std::invalid_argument);
  at::Tensor flags = at::zeros({2}, at::kBool);
  EXPECT_THROW(comm().allreduce(flags, ReduceOp::Sum), std::invalid_argument);
  at::Tensor x = at::zeros({2}, at::kFloat);
  EXPECT_THROW(comm().broadcast(x, comm().size()), std::invalid_argument);
  std::vector<at::Tensor> one_too_many(comm().size() + 1, at::zeros({2}, at::kFloat));
  EXPECT_THROW(comm().allgather(one_too_many, x), std::invalid_argument);
  std::vector<at::Tensor> wrong_shape(comm().size(), at::zeros({3}, at::kFloat));
  EXPECT_THROW(comm().allgather(wrong_shape, x), std::invalid_argument);
  comm().barrier()->wait();  // nothing was issued by the refused calls: the ranks are still in step
}

TEST(Communicator, AllgatherBytesOfDifferentLengths) {
  std::string mine(comm().rank() + 1, static_cast<char>('a' + comm().rank()));
  std::vector<std::string> all = comm().allgather_bytes(mine);
  ASSERT_EQ(static_cast<int>(all.size()), comm().size());
  for (int r = 0; r < comm().size(); ++r) EXPECT_EQ(all[r], std::string(r + 1, static_cast<char>('a' + r)));
}

// A rank that leaves a rendezvous (a library call such as CheckpointManager::save) and starts its next collective at
// once may answer another rank's "where are you?" before that rank has seen the rendezvous complete. It is not a rank
// that skipped the call: CI once aborted a 2-node Slurm job with "rank 2 will never make this call" that way. Every
// rank arrives at a different moment (so queries are in flight) and goes straight on to a collective.
TEST(Communicator, ARankAlreadyPastARendezvousIsNotMistakenForOneThatSkippedIt) {
  if (comm().size() < 2) GTEST_SKIP() << "needs peers to ask";
  for (int i = 0; i < 300; ++i) {
    const int late = i % comm().size();
    if (comm().rank() == late) std::this_thread::sleep_for(std::chrono::microseconds(200 * (i % 7)));
    const std::string call = "save at step " + std::to_string(i);
    std::vector<std::string> calls;
    ASSERT_NO_THROW(calls = comm().rendezvous(call)) << "rendezvous " << i << " on rank " << comm().rank();
    for (const std::string& theirs : calls) ASSERT_EQ(theirs, call);
    std::vector<std::string> gathered = comm().allgather_bytes(std::to_string(i));
    for (const std::string& theirs : gathered) ASSERT_EQ(theirs, std::to_string(i));
  }
}

// CPU training gives every core to forward and backward; with CommOptions::sleep_while_waiting a rank that reaches a
// collective first does not take one of them while it waits for the others (Open MPI's blocking collectives poll).
TEST(Communicator, ARankWaitingForALatePeerCanLeaveTheCoresToTheComputeThreads) {
  if (comm().size() < 2) GTEST_SKIP() << "needs a rank that arrives late";
  CommOptions options;
  options.sleep_while_waiting = true;
  std::unique_ptr<Communicator> sleeping = ddprun::comm::make_mpi_communicator(options);
  sleeping->barrier()->wait();
  const auto cpu_seconds = [] {
    timespec now{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return double(now.tv_sec) + 1e-9 * double(now.tv_nsec);
  };
  const auto wall_start = std::chrono::steady_clock::now();
  const double cpu_start = cpu_seconds();
  if (comm().rank() == 0) std::this_thread::sleep_for(std::chrono::seconds(1));  // still computing
  at::Tensor t = at::ones({1024}, at::kFloat);
  sleeping->allreduce(t, ReduceOp::Sum)->wait();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  const double cpu = cpu_seconds() - cpu_start;
  EXPECT_TRUE(t.equal(at::full({1024}, double(comm().size()), at::kFloat)));
  if (comm().rank() != 0) {
    EXPECT_GT(wall, 0.9);
    EXPECT_LT(cpu, 0.2 * wall) << "rank " << comm().rank() << " used " << cpu << " s of CPU waiting " << wall
                               << " s for rank 0";
  }
}

// A choice that changes which MPI calls a collective makes, set differently on some ranks, would leave them waiting
// in different calls: the communicator refuses to start, on every rank, naming the variable.
TEST(Communicator, RefusesToStartWhenRanksDisagreeOnHowCollectivesRun) {
  if (comm().size() < 2) GTEST_SKIP() << "needs ranks to disagree";
  CommOptions options;
  options.sleep_while_waiting = comm().rank() == 1;
  try {
    ddprun::comm::make_mpi_communicator(options);
    ADD_FAILURE() << "started although the ranks disagree";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("different DDPRUN_COMM_WAIT_SLEEP"), std::string::npos) << e.what();
  }
  comm().barrier()->wait();  // the others still work
}

// What `top -H` shows: the thread that runs the collectives is called ddprun-comm and runs at the nice value asked
// for (CommOptions::progress_nice, DDPRUN_COMM_NICE), so that Open MPI's polling can give way to forward and backward.
TEST(Communicator, TheCollectivesRunInANamedThreadAtTheNiceValueAskedFor) {
  comm().barrier()->wait();  // the default one exists, at nice 0
  CommOptions options;
  options.progress_nice = 7;
  std::unique_ptr<Communicator> niced = ddprun::comm::make_mpi_communicator(options);
  niced->barrier()->wait();  // its thread has started
  EXPECT_NE(niced->backend_name().find("collectives at nice 7"), std::string::npos) << niced->backend_name();
  int named = 0, at_seven = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream name_file(task.path() / "comm");
    std::string name;
    std::getline(name_file, name);
    if (name != "ddprun-comm") continue;
    ++named;
    std::ifstream stat_file(task.path() / "stat");
    std::string stat;
    std::getline(stat_file, stat);
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));  // after "pid (name) "
    std::vector<std::string> field{std::istream_iterator<std::string>(fields), {}};
    ASSERT_GT(field.size(), 16u);
    at_seven += field[16] == "7";  // proc(5): the nice value is field 19, the 17th after the name
  }
  EXPECT_GE(named, 2);  // comm()'s and this one's
  EXPECT_EQ(at_seven, 1);
}

TEST(CommOptions, ReadFromTheEnvironment) {
  setenv("DDPRUN_COMM_TIMEOUT", "2.5", 1);
  setenv("DDPRUN_COMM_CHECK", "1", 1);
  setenv("DDPRUN_COMM_SEGMENT_BYTES", "65536", 1);
  setenv("DDPRUN_COMM_TREE_FROM_BYTES", "0", 1);
  setenv("DDPRUN_COMM_TREE_SEGMENT_BYTES", "2097152", 1);
  const CommOptions options = ddprun::comm::comm_options_from_env();
  EXPECT_EQ(options.tree_from_bytes, 0);
  EXPECT_EQ(options.tree_segment_bytes, 2097152);
  EXPECT_EQ(options.timeout.count(), 2500);
  EXPECT_TRUE(options.check_shapes);
  EXPECT_EQ(options.segment_bytes, 65536);
  unsetenv("DDPRUN_COMM_CHECK");  // the default: on in builds without NDEBUG (like this test's)
#ifdef NDEBUG
  EXPECT_FALSE(ddprun::comm::comm_options_from_env().check_shapes);
#else
  EXPECT_TRUE(ddprun::comm::comm_options_from_env().check_shapes);
#endif
  setenv("DDPRUN_COMM_TIMEOUT", "soon", 1);
  EXPECT_THROW(ddprun::comm::comm_options_from_env(), std::invalid_argument);
  unsetenv("DDPRUN_COMM_TIMEOUT");
  EXPECT_EQ(ddprun::comm::comm_options_from_env().progress_nice, 0);
  setenv("DDPRUN_COMM_NICE", "19", 1);
  EXPECT_EQ(ddprun::comm::comm_options_from_env().progress_nice, 19);
  for (const char* wrong : {"2.5", "20", "-1", "low"}) {
    setenv("DDPRUN_COMM_NICE", wrong, 1);
    EXPECT_THROW(ddprun::comm::comm_options_from_env(), std::invalid_argument) << wrong;
  }
  unsetenv("DDPRUN_COMM_NICE");
  EXPECT_FALSE(ddprun::comm::comm_options_from_env().sleep_while_waiting);
  setenv("DDPRUN_COMM_WAIT_SLEEP", "1", 1);
  EXPECT_TRUE(ddprun::comm::comm_options_from_env().sleep_while_waiting);
  for (const char* wrong : {"0.5", "2", "yes"}) {
    setenv("DDPRUN_COMM_WAIT_SLEEP", wrong, 1);
    EXPECT_THROW(ddprun::comm::comm_options_from_env(), std::invalid_argument) << wrong;
  }
  unsetenv("DDPRUN_COMM_WAIT_SLEEP");
  unsetenv("DDPRUN_COMM_CHECK");
  unsetenv("DDPRUN_COMM_SEGMENT_BYTES");
  unsetenv("DDPRUN_COMM_TREE_FROM_BYTES");
  unsetenv("DDPRUN_COMM_TREE_SEGMENT_BYTES");
}

TEST(Factory, PicksMpiForCpuRanksAndParsesBackendNames) {
  EXPECT_EQ(ddprun::comm::parse_backend("auto"), ddprun::comm::Backend::Auto);
  EXPECT_EQ(ddprun::comm::parse_backend("nccl"), ddprun::comm::Backend::Nccl);
  EXPECT_THROW(ddprun::comm::parse_backend("gloo"), std::invalid_argument);
  EXPECT_FALSE(ddprun::comm::uses_nccl(ddprun::comm::Backend::Auto, c10::DeviceType::CPU));
  EXPECT_FALSE(ddprun::comm::uses_nccl(ddprun::comm::Backend::Mpi, c10::DeviceType::CUDA));
  EXPECT_TRUE(ddprun::comm::uses_nccl(ddprun::comm::Backend::Nccl, c10::DeviceType::CPU));
  // Auto on a GPU means NCCL exactly when this build has it (without it, MPI carries CUDA tensors via the host).
  EXPECT_EQ(ddprun::comm::uses_nccl(ddprun::comm::Backend::Auto, c10::DeviceType::CUDA),
            ddprun::comm::nccl_compiled_in());
  auto made = ddprun::comm::make_communicator(ddprun::comm::Backend::Auto, c10::DeviceType::CPU, CommOptions{});
  EXPECT_EQ(made->backend_name().rfind("mpi (", 0), 0u) << made->backend_name();
  EXPECT_EQ(made->size(), comm().size());
  at::Tensor one = at::ones({2}, at::kFloat);
  made->allreduce(one, ReduceOp::Sum)->wait();
  EXPECT_TRUE(one.equal(at::full({2}, double(comm().size()), at::kFloat)));
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
  comm().barrier()->wait();
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
