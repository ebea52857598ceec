// The MPI backend of Communicator. Collectives on CPU tensors run in issue order on one communication thread, so the
// caller's thread computes while they run; large buffers are reduced in cache-sized segments and small tensors are
// packed together; a watchdog thread ends the job when a collective outlives the timeout, after asking the other ranks
// how far they got so it can name the ones that never joined.
//
// Thread level: MPI_THREAD_MULTIPLE, requested when this file starts MPI: the communication thread sits in a
// collective while the watchdog answers and sends status queries on a second communicator. When someone else started
// MPI with MPI_THREAD_SERIALIZED, collectives still run on the communication thread (never two MPI calls at once)
// and timeouts still abort the job, but the other ranks are not asked. Less than SERIALIZED is refused.
#include "comm/communicator.h"
#include "comm/open_mpi_settings.h"
#include "comm/peer_status.h"
#include "comm/ready_report.h"
#include "comm/tensor_text.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <mpi.h>
// after mpi.h, which it needs
#include <mpi-ext.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace ddprun::comm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kTagStatusQuery = 1;
constexpr int kTagStatusReply = 2;
constexpr int kTagCallQuery = 3;  // rendezvous(): "where are you?" while waiting for a library call
constexpr int kTagCallReply = 4;
// A rendezvous label's bytes on the wire (longer names are cut).
constexpr int kCallLabelBytes = 256;
// A rank that answers no status query for this long during a rendezvous has exited (or hangs outside ddprun).
constexpr auto kSilentPeer = std::chrono::seconds(10);
// How the communication thread waits for the other ranks to reach a collective (wait_for_every_rank).
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(200);
constexpr auto kShortestSleep = std::chrono::microseconds(20);
constexpr auto kLongestSleep = std::chrono::milliseconds(1);

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw CommError(std::string(what) + " failed: " + std::string(text, len));
}

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    default:
      return "MPI_THREAD_MULTIPLE";
  }
}

// Whether the MPI library can read device memory itself (Open MPI's extension); ours copies through the host either
// way, but says which it is.
bool mpi_is_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

// ---- element types and reductions -------------------------------------------------------------------------------

// float16 and bfloat16 have no MPI type: they travel as 16-bit words and are reduced by our own MPI_Op, in float.
template <typename T, typename Combine>
void reduce_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  Combine combine;
  for (int i = 0; i < *len; ++i) b[i] = T(combine(static_cast<float>(a[i]), static_cast<float>(b[i])));
}
struct Add {
  float operator()(float a, float b) const { return a + b; }
};
struct Larger {
  float operator()(float a, float b) const { return std::max(a, b); }
};
struct Smaller {
  float operator()(float a, float b) const { return std::min(a, b); }
};

struct SixteenBitOps {
  MPI_Op half[3] = {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};  // sum, max, min
  MPI_Op bfloat[3] = {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};

  void create() {
    MPI_Op_create(&reduce_16bit<c10::Half, Add>, 1, &half[0]);
    MPI_Op_create(&reduce_16bit<c10::Half, Larger>, 1, &half[1]);
    MPI_Op_create(&reduce_16bit<c10::Half, Smaller>, 1, &half[2]);
    MPI_Op_create(&reduce_16bit<c10::BFloat16, Add>, 1, &bfloat[0]);
    MPI_Op_create(&reduce_16bit<c10::BFloat16, Larger>, 1, &bfloat[1]);
    MPI_Op_create(&reduce_16bit<c10::BFloat16, Smaller>, 1, &bfloat[2]);
  }
  void free() {
    for (MPI_Op* op : {&half[0], &half[1], &half[2], &bfloat[0], &bfloat[1], &bfloat[2]})
      if (*op != MPI_OP_NULL) MPI_Op_free(op);
  }
};

MPI_Datatype mpi_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kHalf:
    case at::kBFloat16:
      return MPI_UINT16_T;
    case at::kLong:
      return MPI_INT64_T;
    case at::kInt:
      return MPI_INT32_T;
    case at::kShort:
      return MPI_INT16_T;
    case at::kChar:
      return MPI_INT8_T;
    case at::kByte:
      return MPI_UINT8_T;
    default:
      return MPI_DATATYPE_NULL;
  }
}

MPI_Op mpi_op(ReduceOp op, at::ScalarType type, const SixteenBitOps& ops) {
  const int which = op == ReduceOp::Max ? 1 : op == ReduceOp::Min ? 2 : 0;
  if (type == at::kHalf) return ops.half[which];
  if (type == at::kBFloat16) return ops.bfloat[which];
  return which == 1 ? MPI_MAX : which == 2 ? MPI_MIN : MPI_SUM;
}

template <typename T>
void divide_elements(void* data, int64_t count, int divisor) {
  T* p = static_cast<T*>(data);
  for (int64_t i = 0; i < count; ++i) p[i] = T(static_cast<float>(p[i]) / static_cast<float>(divisor));
}

// Average = sum / size, divided right after each segment's reduction while it is still in cache. float and double go
// through ATen's div_, which picks its AVX2/AVX-512 kernel at run time: GCC at -O2 (the default RelWithDebInfo build)
// leaves a plain loop scalar, and dividing mlp's 64 MiB bucket that way took ~15 ms a step. Division rounds
// correctly either way, so the bits are the same (and the same as the main thread's div_ in --grad-sync per-param).
void divide(void* data, int64_t count, at::ScalarType type, int divisor) {
  switch (type) {
    case at::kFloat:
    case at::kDouble:
      at::from_blob(data, {count}, at::TensorOptions().dtype(type)).div_(divisor);
      return;
    case at::kHalf:
      return divide_elements<c10::Half>(data, count, divisor);
    case at::kBFloat16:
      return divide_elements<c10::BFloat16>(data, count, divisor);
    default:
      break;  // refused when the collective was issued
  }
}

// ---- one collective -----------------------------------------------------------------------------------------------

// A contiguous CPU buffer holding a tensor's values during a collective: the tensor itself when it is a contiguous
// CPU tensor, else a host copy made on the caller's thread when the collective is issued (so a CUDA tensor is read
// in its stream's order) and copied back when the collective is done.
struct Buffer {
  at::Tensor tensor;  // the caller's
  at::Tensor host;    // what MPI reads and writes
  bool staged() const { return !host.is_same(tensor); }
  void copy_back() {
    if (staged()) tensor.copy_(host);
  }
};

// `with_values`: the host copy starts with the tensor's values (false for outputs that are only written).
Buffer host_buffer(const at::Tensor& tensor, bool with_values = true) {
  if (tensor.device().is_cpu() && tensor.is_contiguous()) return {tensor, tensor};
  if (!with_values) return {tensor, at::empty(tensor.sizes(), tensor.options().device(at::kCPU))};
  return {tensor,
          tensor.to(at::Device(at::kCPU), tensor.scalar_type(), /*non_blocking=*/false, /*copy=*/true).contiguous()};
}

// A failure that every rank sees alike (the shape check): the collective fails, the communicator goes on.
class AgreedFailure : public CommError {
 public:
  explicit AgreedFailure(const std::string& message) : CommError(message, /*failed_rank=*/0) {}
};

class Completion {
 public:
  void finish(std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
      finished_at_ = std::chrono::steady_clock::now();
      error_ = std::move(error);
    }
    cv_.notify_all();
  }
  // false on timeout; rethrows the collective's error.
  bool wait_for(std::optional<std::chrono::milliseconds> timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (timeout) {
      if (!cv_.wait_for(lock, *timeout, [&] { return done_; })) return false;
    } else {
      cv_.wait(lock, [&] { return done_; });
    }
    if (error_) std::rethrow_exception(error_);
    return true;
  }
  bool done() {
    std::lock_guard<std::mutex> lock(mutex_);
    return done_;
  }
  std::chrono::steady_clock::time_point finished_at() {
    std::lock_guard<std::mutex> lock(mutex_);
    return finished_at_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::chrono::steady_clock::time_point finished_at_;
  std::exception_ptr error_;
};

enum class Kind { Allreduce, Broadcast, Allgather, Barrier, AllgatherBytes };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Allreduce:
      return "allreduce";
    case Kind::Broadcast:
      return "broadcast";
    case Kind::Allgather:
      return "allgather";
    case Kind::Barrier:
      return "barrier";
    case Kind::AllgatherBytes:
      return "allgather of bytes";
  }
  return "collective";
}

struct Op {
  Kind kind = Kind::Barrier;
  uint64_t seq = 0;
  std::vector<at::Tensor> tensors;  // allreduce and broadcast: in place; allgather: the input
  ReduceOp reduce = ReduceOp::Sum;
  int root = 0;
  std::vector<at::Tensor> outputs;  // allgather
  std::vector<Buffer> buffers;      // the tensors' host buffers (allgather: the input's)
  std::vector<Buffer> output_buffers;
  std::string bytes;  // allgather_bytes: this rank's bytes
  std::vector<std::string> gathered;
  Completion completion;

  // What all ranks must agree on, e.g. "allreduce sum float32[4, 6] float16[8]".
  std::string signature() const {
    std::string text = kind_name(kind);
    if (kind == Kind::Allreduce) text += std::string(" ") + to_string(reduce);
    if (kind == Kind::Broadcast) text += " root " + std::to_string(root);
    if (!tensors.empty()) text += " " + describe_tensors(tensors, tensors.size());
    return text;
  }
  std::string name() const { return std::string(kind_name(kind)) + " #" + std::to_string(seq); }
  // For messages: "allreduce #7 (sum; 2 tensors: float32[1024], float32[10] (4.0 KiB))".
  std::string description() const {
    std::string text = name();
    if (kind == Kind::Allreduce) text += std::string(" (") + to_string(reduce) + "; " + describe_tensors(tensors) + ")";
    if (kind == Kind::Broadcast) text += " (from rank " + std::to_string(root) + "; " + describe_tensors(tensors) + ")";
    if (kind == Kind::Allgather) text += " (" + describe_tensors(tensors) + " per rank)";
    if (kind == Kind::AllgatherBytes) text += " (" + std::to_string(bytes.size()) + " bytes from this rank)";
    return text;
  }
};

class MpiWork final : public Work {
 public:
  explicit MpiWork(std::shared_ptr<Op> op) : op_(std::move(op)) {}
  void wait() override { op_->completion.wait_for(std::nullopt); }
  bool wait(std::chrono::milliseconds timeout) override { return op_->completion.wait_for(timeout); }
  bool completed() override { return op_->completion.done(); }
  std::chrono::steady_clock::time_point finished_at() override { return op_->completion.finished_at(); }

 private:
  std::shared_ptr<Op> op_;
};

// ---- the communicator ---------------------------------------------------------------------------------------------

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(const CommOptions& options) : options_(options) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      set_open_mpi_environment();  // the progress loop yields; coll/tuned may take a forced choice (see there)
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &thread_level_), "MPI_Init_thread");
      owns_mpi_ = true;
    } else {
      MPI_Query_thread(&thread_level_);
    }
    if (thread_level_ < MPI_THREAD_SERIALIZED) {
      if (owns_mpi_) MPI_Finalize();
      throw CommError(std::string("MPI was started with ") + thread_level_name(thread_level_) +
                      "; ddprun's communication thread needs MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE "
                      "(call MPI_Init_thread with MPI_THREAD_MULTIPLE, or let ddprun start MPI)");
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &world_);
    MPI_Comm_dup(MPI_COMM_WORLD, &control_);
    MPI_Comm_dup(MPI_COMM_WORLD, &calls_);
    // Errors on our communicators come back as codes (then one line each); the program's MPI_COMM_WORLD is left as is.
    MPI_Comm_set_errhandler(world_, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(control_, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(calls_, MPI_ERRORS_RETURN);
    if (options_.tree_from_bytes > 0) {
      tree_ = duplicate_with_allreduce_algorithm(MPI_COMM_WORLD, kOpenMpiRabenseifner, &tree_missing_);
      if (tree_ != MPI_COMM_NULL) MPI_Comm_set_errhandler(tree_, MPI_ERRORS_RETURN);
    } else {
      tree_missing_ = "DDPRUN_COMM_TREE_FROM_BYTES=0";
    }
    MPI_Comm_rank(world_, &rank_);
    MPI_Comm_size(world_, &size_);
    check(MPI_Comm_split_type(world_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_), "MPI_Comm_split_type");
    MPI_Comm_rank(node_, &local_rank_);
    MPI_Comm_size(node_, &local_size_);
    // Each rank's host, for the lines that name ranks which no longer answer (a node that went down or was cut off).
    std::vector<char> names(static_cast<size_t>(size_) * MPI_MAX_PROCESSOR_NAME, '\0');
    int name_length = 0;
    MPI_Get_processor_name(names.data() + static_cast<size_t>(rank_) * MPI_MAX_PROCESSOR_NAME, &name_length);
    check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, names.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, world_),
          "MPI_Allgather");
    for (int r = 0; r < size_; ++r) {
      names[(static_cast<size_t>(r) + 1) * MPI_MAX_PROCESSOR_NAME - 1] = '\0';
      hosts_.emplace_back(names.data() + static_cast<size_t>(r) * MPI_MAX_PROCESSOR_NAME);
    }
    // The options that decide which MPI calls a collective makes must be the same everywhere, or the ranks would
    // wait in different calls for ever.
    // One all-reduce (max) of each flag and its negation gives the highest and the lowest value.
    const int mine[2] = {options_.check_shapes ? 1 : 0, options_.sleep_while_waiting ? 1 : 0};
    const int sent[4] = {mine[0], -mine[0], mine[1], -mine[1]};
    int got[4] = {0, 0, 0, 0};
    check(MPI_Allreduce(sent, got, 4, MPI_INT, MPI_MAX, world_), "MPI_Allreduce");
    const int highest[2] = {got[0], got[2]}, lowest[2] = {-got[1], -got[3]};
    if (lowest[0] != highest[0] || lowest[1] != highest[1]) {
      for (MPI_Comm* comm : {&node_, &control_, &calls_, &world_, &tree_})
        if (*comm != MPI_COMM_NULL) MPI_Comm_free(comm);
      throw CommError(std::string("the ranks were started with different ") +
                      (lowest[0] != highest[0] ? "DDPRUN_COMM_CHECK" : "DDPRUN_COMM_WAIT_SLEEP") + " (rank " +
                      std::to_string(rank_) + " has " + std::to_string(mine[lowest[0] != highest[0] ? 0 : 1]) +
                      "); give every rank the same value (mpirun -x)");
    }
    sixteen_bit_.create();
    // Whoever finalizes MPI before this communicator is destroyed (a static, say) stops its threads first: MPI
    // deletes MPI_COMM_SELF's attributes at the start of MPI_Finalize.
    check(MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, &shut_down_at_finalize, &finalize_key_, nullptr),
          "MPI_Comm_create_keyval");
    check(MPI_Comm_set_attr(MPI_COMM_SELF, finalize_key_, this), "MPI_Comm_set_attr");
    comm_thread_ = std::thread([this] { run_collectives(); });
    watchdog_thread_ = std::thread([this] { watch(); });
  }

  ~MpiCommunicator() override {
    stop_threads();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;                               // shut down when MPI was finalized
    MPI_Comm_delete_attr(MPI_COMM_SELF, finalize_key_);  // calls shut_down_at_finalize: frees our MPI objects
    MPI_Comm_free_keyval(&finalize_key_);
    if (owns_mpi_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string backend_name() const override {
    return std::string("mpi (") + thread_level_name(thread_level_) + ", " +
           (mpi_is_cuda_aware() ? "CUDA-aware, " : "not CUDA-aware, ") + "segments of " +
           describe_bytes(options_.segment_bytes) + ", collectives at nice " + std::to_string(options_.progress_nice) +
           "; " +
           (tree_ != MPI_COMM_NULL ? "Rabenseifner's all-reduce from " + describe_bytes(options_.tree_from_bytes) +
                                         " in segments of " + describe_bytes(options_.tree_segment_bytes)
                                   : "Open MPI's own all-reduce choice at every size (" + tree_missing_ + ")") +
           ")";
  }
  const CommOptions& options() const override { return options_; }

  WorkHandle allreduce(std::vector<at::Tensor> tensors, ReduceOp op) override {
    for (const at::Tensor& t : tensors) {
      if (mpi_type(t.scalar_type()) == MPI_DATATYPE_NULL)
        throw std::invalid_argument(std::string("allreduce: dtype ") + dtype_name(t.scalar_type()) +
                                    " is not supported; use a floating-point or integer dtype");
      if (op == ReduceOp::Average && !at::isFloatingType(t.scalar_type()))
        throw std::invalid_argument(std::string("allreduce: average needs a floating-point tensor, got ") +
                                    dtype_name(t.scalar_type()) + "; use sum");
    }
    auto work = std::make_shared<Op>();
    work->kind = Kind::Allreduce;
    work->tensors = std::move(tensors);
    work->reduce = op;
    return issue(std::move(work));
  }

  WorkHandle broadcast(std::vector<at::Tensor> tensors, int root) override {
    check_root(root, "broadcast");
    auto work = std::make_shared<Op>();
    work->kind = Kind::Broadcast;
    work->tensors = std::move(tensors);
    work->root = root;
    return issue(std::move(work));
  }

  WorkHandle allgather(std::vector<at::Tensor> outputs, at::Tensor input) override {
    if (static_cast<int>(outputs.size()) != size_)
      throw std::invalid_argument("allgather: " + std::to_string(outputs.size()) + " outputs for " +
                                  std::to_string(size_) + " ranks; pass one output per rank");
    for (size_t r = 0; r < outputs.size(); ++r)
      if (outputs[r].sizes() != input.sizes() || outputs[r].scalar_type() != input.scalar_type())
        throw std::invalid_argument("allgather: output " + std::to_string(r) + " is " + describe_tensors({outputs[r]}) +
                                    ", the input is " + describe_tensors({input}) +
                                    "; outputs must have the input's sizes and dtype");
    auto work = std::make_shared<Op>();
    work->kind = Kind::Allgather;
    work->tensors = {std::move(input)};
    work->outputs = std::move(outputs);
    return issue(std::move(work));
  }

  WorkHandle barrier() override {
    auto work = std::make_shared<Op>();
    work->kind = Kind::Barrier;
    return issue(std::move(work));
  }

  std::vector<std::string> allgather_bytes(const std::string& bytes) override {
    auto work = std::make_shared<Op>();
    work->kind = Kind::AllgatherBytes;
    work->bytes = bytes;
    issue(work)->wait();
    return std::move(work->gathered);
  }

  std::vector<std::string> rendezvous(const std::string& call) override {
    if (size_ == 1) return {call};
    if (!can_ask_peers()) return allgather_bytes(call);  // MPI_THREAD_SERIALIZED: no second thread in MPI
    std::vector<char> label(kCallLabelBytes, '\0'), labels(static_cast<size_t>(kCallLabelBytes) * size_);
    std::memcpy(label.data(), call.data(), std::min<size_t>(call.size(), kCallLabelBytes - 1));
    uint64_t issued = 0;
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      issued = issued_;
    }
    const uint64_t calls_before = calls_completed_.load();
    MPI_Request request;
    check(MPI_Iallgather(label.data(), kCallLabelBytes, MPI_CHAR, labels.data(), kCallLabelBytes, MPI_CHAR, calls_,
                         &request),
          "MPI_Iallgather");
    // While it waits, asks the others twice a second where they are: one that skipped the call (peer_skipped_call)
    // is waiting for this rank, which is waiting for it here, and neither would ever return. One that stops answering
    // has exited.
    const auto start = Clock::now();
    std::vector<Clock::time_point> last_answer(size_, start);
    uint64_t query = 0;
    auto next_query = start;
    for (;;) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) break;
      const auto now = Clock::now();
      if (now >= next_query) {
        ++query;
        for (int r = 0; r < size_; ++r)
          if (r != rank_) MPI_Send(&query, 1, MPI_UINT64_T, r, kTagCallQuery, control_);
        next_query = now + std::chrono::milliseconds(500);
      }
      for (int source = 0;;) {
        const std::optional<std::string> reply = receive_text(kTagCallReply, source);
        if (!reply) break;
        last_answer[source] = Clock::now();
        const size_t query_end = reply->find(' ');  // "<query number> <status>"
        const std::optional<PeerStatus> theirs =
            query_end == std::string::npos ? std::nullopt : parse_peer_status(reply->substr(query_end + 1));
        if (theirs && peer_skipped_call(*theirs, issued, calls_before))
          throw CommError(call + ": rank " + std::to_string(source) + " will never make this call: it " + "waits in " +
                              theirs->what + ", a collective rank " + std::to_string(rank_) +
                              " has not issued (the call was made on some ranks only; make it on every rank)",
                          -1, kExitUsage);
      }
      for (int r = 0; r < size_; ++r) {
        if (r != rank_ && Clock::now() - last_answer[r] > kSilentPeer)
          throw CommError(call + ": rank " + std::to_string(r) + " has not made this call and has not answered for " +
                          std::to_string(kSilentPeer.count()) + " s (it exited, or hangs outside ddprun)");
      }
      if (options_.timeout.count() > 0 && Clock::now() - start > options_.timeout)
        throw CommError(call + ": not every rank made this call within " + describe_duration(options_.timeout));
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    calls_completed_.fetch_add(1);  // before the caller can issue its next collective (see status_text)
    std::vector<std::string> calls;
    for (int r = 0; r < size_; ++r) calls.emplace_back(labels.data() + static_cast<size_t>(r) * kCallLabelBytes);
    return calls;
  }

  [[noreturn]] void abort(int exit_code) override { abort_job(exit_code); }

 private:
  void check_root(int root, const char* what) const {
    if (root < 0 || root >= size_)
      throw std::invalid_argument(std::string(what) + ": root " + std::to_string(root) + " is not a rank (0.." +
                                  std::to_string(size_ - 1) + ")");
  }

  WorkHandle issue(std::shared_ptr<Op> op) {
    for (const at::Tensor& t : op->tensors) op->buffers.push_back(host_buffer(t));
    for (const at::Tensor& t : op->outputs) op->output_buffers.push_back(host_buffer(t, /*with_values=*/false));
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      if (stopping_)
        throw CommError(std::string(kind_name(op->kind)) +
                        ": the communicator has shut down (MPI was finalized); create a new one after MPI_Init");
      op->seq = ++issued_;
      queue_.push_back(op);
    }
    queue_cv_.notify_one();
    return std::make_shared<MpiWork>(std::move(op));
  }

  // The communication thread: runs the collectives in issue order until the communicator goes away.
  void run_collectives() {
    // Named for top -H and perf; at CommOptions::progress_nice (0 by default; 19 lets its polling give way to the
    // compute threads). On Linux a nice value is a thread's own. Only ever raised (which needs no privilege): a job
    // started under `nice -n 10` keeps at least 10 here.
    pthread_setname_np(pthread_self(), "ddprun-comm");
    const auto tid = static_cast<id_t>(syscall(SYS_gettid));
    errno = 0;
    const int nice_now = getpriority(PRIO_PROCESS, tid);
    if (errno == 0 && options_.progress_nice > nice_now) setpriority(PRIO_PROCESS, tid, options_.progress_nice);
    prctl(PR_SET_TIMERSLACK, 1000UL);  // wait_for_every_rank's short sleeps: 1 us late, not Linux's default 50 us
    at::init_num_threads();            // copies made here use the intra-op thread count the caller set
    for (;;) {
      std::shared_ptr<Op> op;
      {
        std::unique_lock<std::mutex> lock(queue_mutex_);
        queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        op = std::move(queue_.front());
        queue_.pop_front();
      }
      {
        std::lock_guard<std::mutex> lock(state_mutex_);
        running_ = true;
        running_since_ = Clock::now();
        started_seq_ = op->seq;
        current_ = op;  // described only if the watchdog needs it: building text for every collective costs
      }
      std::exception_ptr error;
      try {
        if (options_.sleep_while_waiting) wait_for_every_rank();
        if (options_.check_shapes) check_same_tensors_everywhere(*op);
        execute(*op);
        for (Buffer& buffer : op->buffers) buffer.copy_back();
        for (Buffer& buffer : op->output_buffers) buffer.copy_back();
      } catch (const AgreedFailure&) {
        error = std::current_exception();
      } catch (const std::exception& e) {
        // This rank alone failed part way (an MPI error, no memory): the others are in the collective or past it,
        // and no later collective would pair up with theirs.
        std::fprintf(stderr,
                     "ddprun comm: rank %d of %d: %s failed: %s; the ranks cannot stay in step, aborting the job\n",
                     rank_, size_, op->description().c_str(), e.what());
        abort_job(1);
      }
      {
        std::lock_guard<std::mutex> lock(state_mutex_);
        running_ = false;
        op->tensors.clear();  // the results are in the caller's tensors; let go of them
        op->outputs.clear();
        op->buffers.clear();
        op->output_buffers.clear();
      }
      op->completion.finish(error);
    }
  }

  // Returns once every rank has issued this collective, without holding a core while the others are still
  // computing. Open MPI's blocking collectives poll until the last rank arrives (sched_yield in between, which Linux's
  // scheduler barely honours), and where the compute threads have every core (CPU training) the first rank to reach a
  // bucket took their time: on 2 cores, mnist_cnn's early rank's thread burnt a quarter of a core, slowing the late
  // rank it was waiting for. Here an MPI_Ibarrier is polled for kSpinBeforeSleep, then between sleeps of a sixteenth
  // of the time waited so far (kShortestSleep to kLongestSleep): a late arrival is seen within ~6% of the wait, and a
  // long wait costs a wake-up per millisecond. (Every rank must make the same MPI calls, so the barrier cannot be
  // skipped on a rank that happens to find its peers there.)
  void wait_for_every_rank() {
    if (size_ == 1) return;
    MPI_Request request;
    check(MPI_Ibarrier(world_, &request), "MPI_Ibarrier");
    const auto start = Clock::now();
    for (;;) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return;
      const auto waited = Clock::now() - start;
      if (waited < kSpinBeforeSleep) continue;
      std::this_thread::sleep_for(std::clamp<Clock::duration>(waited / 16, kShortestSleep, kLongestSleep));
    }
  }

  void execute(Op& op) {
    switch (op.kind) {
      case Kind::Allreduce:
        return run_allreduce(op.buffers, op.reduce);
      case Kind::Broadcast:
        return run_broadcast(op.buffers, op.root);
      case Kind::Allgather:
        return run_allgather(op.buffers[0], op.output_buffers);
      case Kind::Barrier:
        return check(MPI_Barrier(world_), "MPI_Barrier");
      case Kind::AllgatherBytes:
        op.gathered = gather_strings(op.bytes);
        return;
    }
  }

  // Small tensors (up to kPackBytes each) are packed into one buffer per dtype and reduced with one call.
  static constexpr int64_t kPackBytes = 256 << 10;

  // Calls fn(pointer, count) over `host` in pieces of at most segment_bytes (and INT_MAX) bytes, counted in
  // elements, or in bytes when `as_bytes`.
  template <typename Fn>
  void for_each_segment(const at::Tensor& host, bool as_bytes, Fn fn) const {
    for_each_segment(host, as_bytes, options_.segment_bytes, fn);
  }
  template <typename Fn>
  void for_each_segment(const at::Tensor& host, bool as_bytes, int64_t segment_bytes, Fn fn) const {
    const int64_t unit = as_bytes ? 1 : host.element_size();
    const int64_t count = host.nbytes() / unit;
    const int64_t limit = segment_bytes > 0 ? segment_bytes / unit : INT_MAX;
    const int64_t step = std::clamp<int64_t>(limit, 1, INT_MAX);
    char* data = static_cast<char*>(host.data_ptr());
    for (int64_t done = 0; done < count; done += step)
      fn(data + done * unit, static_cast<int>(std::min(step, count - done)));
  }

  // Groups the buffers into runs: a large tensor alone, or consecutive small ones of one dtype up to a segment.
  template <typename Fn>
  void for_each_group(const std::vector<Buffer>& buffers, Fn fn) const {
    const int64_t packed_limit = std::max<int64_t>(options_.segment_bytes, kPackBytes);
    size_t begin = 0;
    while (begin < buffers.size()) {
      size_t end = begin + 1;
      int64_t bytes = buffers[begin].host.nbytes();
      if (bytes <= kPackBytes) {
        while (end < buffers.size() && buffers[end].host.scalar_type() == buffers[begin].host.scalar_type() &&
               int64_t(buffers[end].host.nbytes()) <= kPackBytes &&
               bytes + int64_t(buffers[end].host.nbytes()) <= packed_limit) {
          bytes += buffers[end].host.nbytes();
          ++end;
        }
      }
      fn(begin, end);
      begin = end;
    }
  }

  // Runs `on_host(host)` over the buffers [begin, end): the buffer itself when alone, else one packed copy of them.
  template <typename Fn>
  void with_packed(const std::vector<Buffer>& buffers, size_t begin, size_t end, Fn on_host) {
    if (end - begin == 1) {
      if (buffers[begin].host.numel() > 0) on_host(buffers[begin].host);
      return;
    }
    int64_t count = 0;
    for (size_t i = begin; i < end; ++i) count += buffers[i].host.numel();
    at::Tensor packed = at::empty({count}, at::TensorOptions().dtype(buffers[begin].host.scalar_type()));
    char* cursor = static_cast<char*>(packed.data_ptr());
    for (size_t i = begin; i < end; ++i) {
      std::memcpy(cursor, buffers[i].host.data_ptr(), buffers[i].host.nbytes());
      cursor += buffers[i].host.nbytes();
    }
    on_host(packed);
    cursor = static_cast<char*>(packed.data_ptr());
    for (size_t i = begin; i < end; ++i) {
      std::memcpy(buffers[i].host.data_ptr(), cursor, buffers[i].host.nbytes());
      cursor += buffers[i].host.nbytes();
    }
  }

  void run_allreduce(const std::vector<Buffer>& buffers, ReduceOp op) {
    for_each_group(buffers, [&](size_t begin, size_t end) {
      with_packed(buffers, begin, end, [&](const at::Tensor& host) {
        const at::ScalarType type = host.scalar_type();
        // float16/bfloat16 are divided before the sum, as NCCL's average does, so that it cannot overflow.
        const bool divide_first = op == ReduceOp::Average && (type == at::kHalf || type == at::kBFloat16);
        const MPI_Op reduction = mpi_op(divide_first ? ReduceOp::Sum : op, type, sixteen_bit_);
        // The choice depends on the buffer's size alone, never on where the ranks are, so that the sums' order
        // (and so their bits) is the same on any layout of nodes.
        const bool tree = tree_ != MPI_COMM_NULL && int64_t(host.nbytes()) >= options_.tree_from_bytes;
        MPI_Comm comm = tree ? tree_ : world_;
        const int64_t segment = tree ? options_.tree_segment_bytes : options_.segment_bytes;
        for_each_segment(host, /*as_bytes=*/false, segment, [&](char* data, int n) {
          if (divide_first) divide(data, n, type, size_);
          check(MPI_Allreduce(MPI_IN_PLACE, data, n, mpi_type(type), reduction, comm), "MPI_Allreduce");
          if (op == ReduceOp::Average && !divide_first) divide(data, n, type, size_);
        });
      });
    });
  }

  void run_broadcast(const std::vector<Buffer>& buffers, int root) {
    for_each_group(buffers, [&](size_t begin, size_t end) {
      with_packed(buffers, begin, end, [&](const at::Tensor& host) {
        for_each_segment(host, /*as_bytes=*/true,
                         [&](char* data, int n) { check(MPI_Bcast(data, n, MPI_BYTE, root, world_), "MPI_Bcast"); });
      });
    });
  }

  void run_allgather(const Buffer& in, const std::vector<Buffer>& out) {
    const int64_t bytes = in.host.nbytes();
    const int64_t step = std::clamp<int64_t>(options_.segment_bytes > 0 ? options_.segment_bytes : INT_MAX, 1,
                                             INT_MAX / std::max(size_, 1));
    at::Tensor received = at::empty({std::min(step, bytes) * size_}, at::TensorOptions().dtype(at::kByte));
    const char* source = static_cast<const char*>(in.host.data_ptr());
    char* gathered = static_cast<char*>(received.data_ptr());
    for (int64_t done = 0; done < bytes; done += step) {
      const int n = static_cast<int>(std::min(step, bytes - done));
      check(MPI_Allgather(source + done, n, MPI_BYTE, gathered, n, MPI_BYTE, world_), "MPI_Allgather");
      for (int r = 0; r < size_; ++r)
        std::memcpy(static_cast<char*>(out[r].host.data_ptr()) + done, gathered + int64_t(r) * n, n);
    }
  }

  std::vector<std::string> gather_strings(const std::string& bytes) {
    int length = static_cast<int>(bytes.size());
    std::vector<int> lengths(size_), offsets(size_);
    check(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, world_), "MPI_Allgather");
    int total = 0;
    for (int r = 0; r < size_; ++r) {
      offsets[r] = total;
      total += lengths[r];
    }
    std::string all(total, '\0');
    check(MPI_Allgatherv(bytes.data(), length, MPI_BYTE, all.data(), lengths.data(), offsets.data(), MPI_BYTE, world_),
          "MPI_Allgatherv");
    std::vector<std::string> result(size_);
    for (int r = 0; r < size_; ++r) result[r] = all.substr(offsets[r], lengths[r]);
    return result;
  }

  // The shape check: every rank's signature, compared before any buffer is exchanged.
  void check_same_tensors_everywhere(const Op& op) {
    const std::string mismatch = signature_mismatch(op.name(), gather_strings(op.signature()));
    if (!mismatch.empty()) throw AgreedFailure(mismatch);
  }

  static int shut_down_at_finalize(MPI_Comm, int, void* communicator, void*) {
    auto* self = static_cast<MpiCommunicator*>(communicator);
    self->stop_threads();
    self->sixteen_bit_.free();
    MPI_Comm_free(&self->node_);
    MPI_Comm_free(&self->control_);
    MPI_Comm_free(&self->calls_);
    MPI_Comm_free(&self->world_);
    if (self->tree_ != MPI_COMM_NULL) MPI_Comm_free(&self->tree_);
    return MPI_SUCCESS;
  }

  // Runs what was issued (the other ranks expect it), then stops both threads; later collectives are refused.
  void stop_threads() {
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      if (stopping_) return;
      stopping_ = true;
    }
    queue_cv_.notify_all();
    comm_thread_.join();
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      watchdog_stop_ = true;
    }
    watchdog_cv_.notify_all();
    watchdog_thread_.join();
  }

  // ---- the watchdog -----------------------------------------------------------------------------------------------

  bool can_ask_peers() const { return thread_level_ == MPI_THREAD_MULTIPLE && size_ > 1; }

  void watch() {
    const auto timeout = options_.timeout;
    const auto period = watchdog_period(timeout);
    std::unique_lock<std::mutex> lock(state_mutex_);
    while (!watchdog_stop_) {
      watchdog_cv_.wait_for(lock, period);
      if (watchdog_stop_) break;
      const bool timed_out = timeout.count() > 0 && running_ && Clock::now() - running_since_ > timeout;
      const std::string description = timed_out ? current_->description() : std::string();
      const uint64_t seq = started_seq_;
      lock.unlock();
      if (can_ask_peers()) answer_status_queries();
      if (timed_out) end_job_after_timeout(description, seq);
      lock.lock();
    }
  }

  // This rank's peer_status_text: its latest collective and the rendezvous it has left.
  std::string status_text() {
    PeerStatus status;
    {
      std::lock_guard<std::mutex> lock(state_mutex_);
      status.started_seq = started_seq_;
      status.running = running_;
      // A completed collective has let go of its tensors: it is named by kind and number.
      status.what = !current_ ? "" : running_ ? current_->description() : current_->name();
    }
    // Read after the collective: one issued after a rendezvous was left is then always seen with that rendezvous
    // counted (rendezvous() counts it before returning to its caller).
    status.calls_completed = calls_completed_.load();
    return peer_status_text(status);
  }

  // A text message with `tag` on the control communicator, if one is waiting (and who sent it); never blocks.
  std::optional<std::string> receive_text(int tag, int& source) {
    int pending = 0;
    MPI_Status status;
    MPI_Iprobe(MPI_ANY_SOURCE, tag, control_, &pending, &status);
    if (!pending) return std::nullopt;
    int length = 0;
    MPI_Get_count(&status, MPI_CHAR, &length);
    std::string text(static_cast<size_t>(length), '\0');
    MPI_Recv(text.data(), length, MPI_CHAR, status.MPI_SOURCE, tag, control_, MPI_STATUS_IGNORE);
    source = status.MPI_SOURCE;
    return text;
  }

  // Answers the status queries waiting: a timed-out rank's (kTagStatusQuery, its sequence number) with the status
  // text, a rendezvous' (kTagCallQuery, its query number) with the query number and the status text.
  void answer_status_queries() {
    for (const int tag : {kTagStatusQuery, kTagCallQuery}) {
      for (;;) {
        int pending = 0;
        MPI_Status status;
        MPI_Iprobe(MPI_ANY_SOURCE, tag, control_, &pending, &status);
        if (!pending) break;
        uint64_t number = 0;
        MPI_Recv(&number, 1, MPI_UINT64_T, status.MPI_SOURCE, tag, control_, MPI_STATUS_IGNORE);
        const std::string reply = (tag == kTagCallQuery ? std::to_string(number) + " " : "") + status_text();
        MPI_Send(reply.data(), static_cast<int>(reply.size()), MPI_CHAR, status.MPI_SOURCE,
                 tag == kTagCallQuery ? kTagCallReply : kTagStatusReply, control_);
      }
    }
  }

  // Asks every other rank which collective it is at (a few seconds at most), prints one line, aborts the job.
  [[noreturn]] void end_job_after_timeout(const std::string& description, uint64_t seq) {
    std::string peers;
    if (can_ask_peers()) {
      std::vector<std::string> replies(size_);
      std::vector<MPI_Request> sends;
      for (int r = 0; r < size_; ++r) {
        if (r == rank_) continue;
        sends.emplace_back();
        MPI_Isend(&seq, 1, MPI_UINT64_T, r, kTagStatusQuery, control_, &sends.back());
      }
      int answered = 0;
      const auto deadline = Clock::now() + std::chrono::seconds(3);
      while (answered < size_ - 1 && Clock::now() < deadline) {
        answer_status_queries();  // the ranks that timed out too are asking us
        int source = 0;
        std::optional<std::string> reply = receive_text(kTagStatusReply, source);
        if (!reply) {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          continue;
        }
        replies[source] = std::move(*reply);
        ++answered;
      }
      peers = describe_peers(replies, seq);
    } else if (size_ > 1) {
      peers = "; the other ranks were not asked how far they got (MPI runs at " +
              std::string(thread_level_name(thread_level_)) + ", not MPI_THREAD_MULTIPLE)";
    }
    std::fprintf(stderr, "ddprun comm: rank %d of %d: %s did not complete within %s%s; aborting the job\n", rank_,
                 size_, description.c_str(), describe_duration(options_.timeout).c_str(), peers.c_str());
    abort_job(1);
  }

  // Ends every rank of the job: tells ddprun first (it ends the launcher if the launcher cannot end the job, say
  // because a node is cut off), then MPI_Abort.
  [[noreturn]] static void abort_job(int exit_code) {
    std::fflush(stdout);
    std::fflush(stderr);
    report_job_aborting();
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

  std::string describe_peers(const std::vector<std::string>& replies, uint64_t seq) const {
    std::string waiting, joined;
    std::vector<std::pair<std::string, std::vector<int>>> silent;  // by host, in rank order
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      const std::string& reply = replies[r];
      if (reply.empty()) {
        auto group = std::find_if(silent.begin(), silent.end(), [&](const auto& g) { return g.first == hosts_[r]; });
        if (group == silent.end()) group = silent.insert(silent.end(), {hosts_[r], {}});
        group->second.push_back(r);
        continue;
      }
      const std::optional<PeerStatus> theirs = parse_peer_status(reply);
      if (!theirs) continue;
      const uint64_t their_seq = theirs->started_seq;
      const bool running = theirs->running;
      const std::string& what = theirs->what;
      if (their_seq >= seq) {
        joined += (joined.empty() ? "" : ", ") + std::to_string(r);
      } else {
        waiting += (waiting.empty() ? "" : ", ") + std::string("rank ") + std::to_string(r) + " (" +
                   (their_seq == 0 ? std::string("no collective yet")
                                   : std::string("last at ") + what + (running ? ", still running" : ", completed")) +
                   ")";
      }
    }
    std::string text;
    if (!waiting.empty()) text += "; waiting on " + waiting + ", which never joined it";
    for (const auto& [host, ranks] : silent) {
      std::string list;
      for (const int r : ranks) list += (list.empty() ? "" : ", ") + std::to_string(r);
      const auto on_host = std::count(hosts_.begin(), hosts_.end(), host);
      const bool whole_node = host != hosts_[rank_] && static_cast<int64_t>(ranks.size()) == on_host;
      text += "; no answer from rank(s) " + list + " on " + host +
              (whole_node ? " (every rank of " + host + ": is the node down or cut off from this one?)"
                          : " (exited, or stuck outside ddprun)");
    }
    if (!joined.empty()) text += "; rank(s) " + joined + " joined it";
    return text;
  }

  CommOptions options_;
  bool owns_mpi_ = false;
  int finalize_key_ = MPI_KEYVAL_INVALID;
  int thread_level_ = MPI_THREAD_SINGLE;
  MPI_Comm world_ = MPI_COMM_NULL;    // the collectives
  MPI_Comm tree_ = MPI_COMM_NULL;     // large all-reduces: Rabenseifner's algorithm (comm/open_mpi_settings.h)
  std::string tree_missing_;          // why tree_ is absent
  MPI_Comm control_ = MPI_COMM_NULL;  // the watchdog's status queries
  MPI_Comm calls_ = MPI_COMM_NULL;    // rendezvous() of library calls
  MPI_Comm node_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  std::vector<std::string> hosts_;  // each rank's host (MPI_Get_processor_name)
  SixteenBitOps sixteen_bit_;

  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<std::shared_ptr<Op>> queue_;
  uint64_t issued_ = 0;
  bool stopping_ = false;
  std::atomic<uint64_t> calls_completed_{0};  // rendezvous() completed by this rank, told to the ranks that ask

  std::mutex state_mutex_;  // what the communication thread is doing, for the watchdog
  std::condition_variable watchdog_cv_;
  bool running_ = false;
  Clock::time_point running_since_;
  uint64_t started_seq_ = 0;
  std::shared_ptr<Op> current_;  // the latest collective started
  bool watchdog_stop_ = false;

  std::thread comm_thread_;
  std::thread watchdog_thread_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& options) {
  return std::make_unique<MpiCommunicator>(options);
}

}  // namespace ddprun::comm
