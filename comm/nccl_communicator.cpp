// The NCCL backend of Communicator: collectives on CUDA tensors run on the communicator's own CUDA stream, ordered
// after the caller's current stream; CPU tensors, allgather_bytes and barrier go to the MPI bootstrap communicator.
// A watchdog thread retires finished collectives and ends the job when NCCL fails or a collective outlives the timeout.
//
// Streams without c10_cuda: the caller's stream is reached through c10's device-generic guard interface
// (VirtualGuardImpl), so this file links against the CUDA runtime and NCCL only, and works with any LibTorch whose
// CUDA support is loaded. Instead of recordStream, every collective holds its tensors until the watchdog has seen it
// complete, so LibTorch's caching allocator cannot hand their memory out while NCCL still uses it.
#include "comm/agreement.h"
#include "comm/communicator.h"
#include "comm/factory.h"
#include "comm/launch_environment.h"
#include "comm/tensor_text.h"

#include <ATen/ops/empty.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

static_assert(NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0),
              "ddprun's NCCL backend needs NCCL 2.13 or newer (ncclAvg, ncclBfloat16, ncclGetLastError)");

namespace ddprun::comm {
namespace {

using Clock = std::chrono::steady_clock;

void check_cuda(cudaError_t rc, const char* call) {
  if (rc == cudaSuccess) return;
  cudaGetLastError();  // clear it, so LibTorch's next kernel launch check does not report it again
  throw CommError(std::string("NCCL backend: ") + call + " failed: " + cudaGetErrorString(rc));
}

void check_nccl(ncclResult_t rc, const char* call, ncclComm_t comm = nullptr) {
  if (rc == ncclSuccess) return;
  std::string message = std::string("NCCL backend: ") + call + " failed: " + ncclGetErrorString(rc);
  const char* detail = ncclGetLastError(comm);
  if (detail && *detail) message += std::string(" (") + detail + ")";
  throw CommError(message);
}

// cudaEventQuery that leaves no cudaErrorNotReady behind in the thread's last-error slot.
cudaError_t query_event(cudaEvent_t event) {
  const cudaError_t rc = cudaEventQuery(event);
  if (rc != cudaSuccess) cudaGetLastError();
  return rc;
}

ncclDataType_t nccl_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kChar:
      return ncclInt8;
    case at::kByte:
      return ncclUint8;
    case at::kInt:
      return ncclInt32;
    case at::kLong:
      return ncclInt64;
    default:
      throw std::invalid_argument("NCCL allreduce: dtype " + dtype_name(type) +
                                  " is not supported; use float32, float64, float16, bfloat16, int8, uint8, int32 or "
                                  "int64");
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Average:
      return ncclAvg;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  return ncclSum;
}

// "2.28.9" from NCCL_VERSION_CODE's two layouts (2.8.4 is 2804, 2.28.9 is 22809).
std::string version_text(int code) {
  const int major = code >= 10000 ? code / 10000 : code / 1000;
  const int minor = code >= 10000 ? code % 10000 / 100 : code % 1000 / 100;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(code % 100);
}

// Makes `device` the calling thread's current CUDA device for a scope, as the CUDA and NCCL calls on it need.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ == device) {
      previous_ = -1;
    } else {
      check_cuda(cudaSetDevice(device), "cudaSetDevice");
    }
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

// A result that reaches the caller's tensor by a copy: a non-contiguous tensor reduced in a contiguous buffer, or
// one rank's slice of an all-gather's staging buffer.
struct CopyBack {
  at::Tensor destination;
  at::Tensor source;
};

// One collective on the NCCL stream, shared by its Work handle and the watchdog.
struct Collective {
  std::string description;  // "allreduce #7 (sum; 2 tensors: float32[1024], float32[10] (4.0 KiB))"
  cudaEvent_t done = nullptr;
  Clock::time_point issued;
  std::atomic<int64_t> finished_ns{0};  // steady clock, when the host first saw `done`; 0 before
  void note_finished() {
    int64_t expected = 0;
    finished_ns.compare_exchange_strong(expected, Clock::now().time_since_epoch().count());
  }
  // What NCCL reads and writes; dropped once the watchdog has seen `done`. Guarded by the communicator's mutex.
  std::vector<at::Tensor> buffers;

  Collective() = default;
  Collective(const Collective&) = delete;
  Collective& operator=(const Collective&) = delete;
  ~Collective() {
    if (done) cudaEventDestroy(done);
  }
};

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<Collective> collective, c10::Stream issued_on, std::vector<CopyBack> copies)
      : collective_(std::move(collective)), issued_on_(issued_on), copies_(std::move(copies)) {}

  // Makes the caller's current stream wait for the collective (the host does not wait), then queues the copies into
  // non-contiguous or gathered outputs on that stream.
  void wait() override {
    throw_if_failed();
    c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
    const c10::Stream current = cuda.getStream(issued_on_.device());
    cuda.block(collective_->done, current);
    copy_results(cuda, current);
  }

  bool wait(std::chrono::milliseconds timeout) override {
    const Clock::time_point deadline = Clock::now() + timeout;
    auto pause = std::chrono::microseconds(20);
    while (!completed()) {
      const Clock::time_point now = Clock::now();
      if (now >= deadline) return false;
      std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
    throw_if_failed();
    // The results are in the tensors NCCL wrote; copies into other outputs are made now and waited for, so the
    // caller may read every output from any stream or the host.
    c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
    const c10::Stream current = cuda.getStream(issued_on_.device());
    cuda.block(collective_->done, current);
    if (copy_results(cuda, current)) cuda.synchronizeStream(current);
    return true;
  }

  bool completed() override {
    const bool done = query_event(collective_->done) != cudaErrorNotReady;
    if (done) collective_->note_finished();
    return done;
  }
  Clock::time_point finished_at() override {
    return Clock::time_point(Clock::duration(collective_->finished_ns.load()));
  }

 private:
  // A CUDA error reported by the completion event (the context is then unusable).
  void throw_if_failed() {
    const cudaError_t rc = query_event(collective_->done);
    if (rc != cudaSuccess && rc != cudaErrorNotReady)
      throw CommError("NCCL " + collective_->description + " failed: cudaEventQuery: " + cudaGetErrorString(rc));
  }

  // Queues the copies on `current` once; true if there were any. A staging buffer belongs to the stream it was made
  // on: read on another one, the caching allocator is told so (recordStream) before the buffer is dropped.
  bool copy_results(const c10::impl::VirtualGuardImpl& cuda, const c10::Stream& current) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (copies_.empty()) return false;
    for (CopyBack& copy : copies_) {
      copy.destination.copy_(copy.source);
      if (current != issued_on_) cuda.recordDataPtrOnStream(copy.source.storage().data_ptr(), current);
    }
    copies_.clear();
    return true;
  }

  std::shared_ptr<Collective> collective_;
  c10::Stream issued_on_;  // the caller's stream when the collective was issued
  std::mutex mutex_;
  std::vector<CopyBack> copies_;
};

// Contiguous buffers for NCCL: the caller's tensors where they are contiguous, copies made on the caller's stream
// where not (wait() copies the results back). Zero-element tensors are left out.
struct Staged {
  std::vector<at::Tensor> buffers;
  std::vector<CopyBack> copies;
};

Staged stage(const std::vector<at::Tensor>& tensors) {
  Staged staged;
  for (const at::Tensor& tensor : tensors) {
    if (tensor.numel() == 0) continue;
    if (tensor.is_contiguous()) {
      staged.buffers.push_back(tensor);
    } else {
      staged.buffers.push_back(tensor.contiguous());
      staged.copies.push_back({tensor, staged.buffers.back()});
    }
  }
  return staged;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<Communicator> bootstrap, const CommOptions& options)
      : bootstrap_(std::move(bootstrap)),
        options_(options),
        rank_(bootstrap_->rank()),
        size_(bootstrap_->size()),
        local_rank_(bootstrap_->local_rank()),
        local_size_(bootstrap_->local_size()),
        device_(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(local_rank_)) {
    // Every rank learns whether every other rank found its GPU before any of them waits for the NCCL id.
    // A failure reaches every rank as the same CollectiveFailure (a CommError).
    ncclUniqueId id{};
    run_on_all_ranks(*bootstrap_, [&] {
      open_device();
      if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    });
    at::Tensor id_bytes = at::empty({static_cast<int64_t>(sizeof id)}, at::kByte);
    std::memcpy(id_bytes.data_ptr(), &id, sizeof id);
    bootstrap_->broadcast(id_bytes, 0)->wait();
    std::memcpy(&id, id_bytes.data_ptr(), sizeof id);

    // open_device() has made this rank's GPU the current device, and it stays so (as torch.cuda.set_device would).
    // ncclCommInitRank waits for every rank; one that died after the id went out would make it wait forever.
    init_with_timeout(id);
    try {
      check_nccl(ncclGetVersion(&nccl_version_), "ncclGetVersion");
      check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
      watchdog_ = std::thread([this] { watch(); });
    } catch (...) {
      release(/*healthy=*/true);
      throw;
    }
  }

  ~NcclCommunicator() override {
    // Let the collectives in flight finish (nobody may be waiting for them), at most for the timeout.
    bool drained = false;
    if (cudaSetDevice(device_.index()) == cudaSuccess) drained = drain();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    watchdog_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    release(drained);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string backend_name() const override {
    return "nccl " + version_text(nccl_version_) + " on " + device_.str() + " (CPU tensors over " +
           bootstrap_->backend_name() + ")";
  }
  const CommOptions& options() const override { return options_; }

  using Communicator::allreduce;
  using Communicator::broadcast;

  WorkHandle allreduce(std::vector<at::Tensor> tensors, ReduceOp op) override {
    if (for_bootstrap("allreduce", tensors)) return bootstrap_->allreduce(std::move(tensors), op);
    std::vector<ncclDataType_t> types;
    for (const at::Tensor& t : tensors) {
      if (op == ReduceOp::Average && !at::isFloatingType(t.scalar_type()))
        throw std::invalid_argument("NCCL allreduce: average needs floating-point tensors, got " +
                                    dtype_name(t.scalar_type()) + "; use sum and divide");
      if (t.numel() > 0) types.push_back(nccl_type(t.scalar_type()));
    }
    Staged staged = stage(tensors);
    const std::string detail = std::string(to_string(op)) + "; " + describe_tensors(tensors);
    const std::string signature =
        std::string("allreduce ") + to_string(op) + " " + describe_tensors(tensors, tensors.size());
    const std::vector<at::Tensor>& buffers = staged.buffers;
    return launch("allreduce", detail, signature, staged, [&] {
      for (size_t i = 0; i < buffers.size(); ++i) {
        void* data = buffers[i].data_ptr();
        check_nccl(
            ncclAllReduce(data, data, static_cast<size_t>(buffers[i].numel()), types[i], nccl_op(op), comm_, stream_),
            "ncclAllReduce", comm_);
      }
    });
  }

  WorkHandle broadcast(std::vector<at::Tensor> tensors, int root) override {
    if (root < 0 || root >= size_)
      throw std::invalid_argument("NCCL broadcast: root " + std::to_string(root) + " is not a rank (0.." +
                                  std::to_string(size_ - 1) + ")");
    if (for_bootstrap("broadcast", tensors)) return bootstrap_->broadcast(std::move(tensors), root);
    Staged staged = stage(tensors);
    const std::string detail = "from rank " + std::to_string(root) + "; " + describe_tensors(tensors);
    const std::string signature =
        "broadcast root " + std::to_string(root) + " " + describe_tensors(tensors, tensors.size());
    const std::vector<at::Tensor>& buffers = staged.buffers;
    return launch("broadcast", detail, signature, staged, [&] {
      // Bytes: a broadcast does no arithmetic, so every dtype can go.
      for (const at::Tensor& buffer : buffers) {
        check_nccl(
            ncclBroadcast(buffer.data_ptr(), buffer.data_ptr(), buffer.nbytes(), ncclUint8, root, comm_, stream_),
            "ncclBroadcast", comm_);
      }
    });
  }

  WorkHandle allgather(std::vector<at::Tensor> outputs, at::Tensor input) override {
    std::vector<at::Tensor> all = outputs;
    all.push_back(input);
    if (for_bootstrap("allgather", all)) return bootstrap_->allgather(std::move(outputs), std::move(input));
    if (static_cast<int>(outputs.size()) != size_)
      throw std::invalid_argument("NCCL allgather: " + std::to_string(outputs.size()) + " outputs for " +
                                  std::to_string(size_) + " ranks; pass one output per rank");
    for (size_t r = 0; r < outputs.size(); ++r) {
      if (outputs[r].sizes() != input.sizes() || outputs[r].scalar_type() != input.scalar_type())
        throw std::invalid_argument("NCCL allgather: output " + std::to_string(r) + " is " +
                                    describe_tensors({outputs[r]}) + ", the input is " + describe_tensors({input}) +
                                    "; every output must match the input");
    }
    Staged staged = stage({input});
    staged.copies.clear();  // the input is only read: nothing goes back into it
    const size_t bytes = input.nbytes();
    // NCCL writes the ranks' pieces one after another: straight into the outputs when they lie that way in memory
    // (slices of one tensor), into a staging buffer otherwise.
    void* receive = nullptr;
    if (bytes > 0) {
      if (consecutive(outputs, bytes)) {
        receive = outputs[0].data_ptr();
        staged.buffers.insert(staged.buffers.end(), outputs.begin(), outputs.end());
      } else {
        at::Tensor gathered = at::empty({static_cast<int64_t>(size_) * input.numel()}, input.options());
        for (int r = 0; r < size_; ++r)
          staged.copies.push_back({outputs[r], gathered.narrow(0, r * input.numel(), input.numel()).view_as(input)});
        receive = gathered.data_ptr();
        staged.buffers.push_back(gathered);
      }
    }
    const std::string detail = describe_tensors({input}) + " per rank";
    const std::string signature = "allgather " + describe_tensors({input});
    const void* send = bytes > 0 ? staged.buffers.front().data_ptr() : nullptr;
    return launch("allgather", detail, signature, staged, [&] {
      if (bytes > 0) check_nccl(ncclAllGather(send, receive, bytes, ncclUint8, comm_, stream_), "ncclAllGather", comm_);
    });
  }

  // A host barrier: what callers use it for is "every rank got here" (e.g. rank 0 has written a file). It does not
  // wait for collectives still running on the GPU.
  WorkHandle barrier() override { return bootstrap_->barrier(); }

  std::vector<std::string> allgather_bytes(const std::string& bytes) override {
    return bootstrap_->allgather_bytes(bytes);
  }

  std::vector<std::string> rendezvous(const std::string& call) override { return bootstrap_->rendezvous(call); }

  [[noreturn]] void abort(int exit_code) override {
    if (aborting_.exchange(true)) {
      // Another thread is already ending the job.
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    // No ncclCommAbort: it may block, and the watchdog may be using the communicator; MPI_Abort ends the process,
    // and the driver tears down its kernels and memory with it.
    bootstrap_->abort(exit_code);
    std::_Exit(exit_code);  // not reached
  }

 private:
  void init_with_timeout(const ncclUniqueId& id) {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    std::thread watch;
    if (options_.timeout.count() > 0) {
      watch = std::thread([&] {
        std::unique_lock<std::mutex> lock(mutex);
        if (cv.wait_for(lock, options_.timeout, [&] { return done; })) return;
        lock.unlock();
        end_job("rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": ncclCommInitRank on " +
                device_.str() + " did not complete within " + describe_duration(options_.timeout) +
                " (a rank exited or cannot reach the others; NCCL_DEBUG=INFO tells more)");
      });
    }
    const ncclResult_t rc = ncclCommInitRank(&comm_, size_, id, rank_);
    {
      std::lock_guard<std::mutex> lock(mutex);
      done = true;
    }
    cv.notify_all();
    if (watch.joinable()) watch.join();
    check_nccl(rc, "ncclCommInitRank");
  }

  // Checks that this rank has its GPU and that LibTorch can drive it, and makes it the current device.
  void open_device() {
    int count = 0;
    const cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count == 0) {
      cudaGetLastError();
      throw CommError("NCCL backend requested but rank " + std::to_string(rank_) +
                      " sees no CUDA device (cudaGetDeviceCount: " +
                      (rc != cudaSuccess ? std::string(cudaGetErrorString(rc)) : std::string("0 devices")) +
                      "); use --backend mpi or run where GPUs are visible");
    }
    // The rank's own GPU: cuda:<local rank> when it sees the node's GPUs, cuda:0 when the launcher gave it its own.
    int index = 0;
    try {
      index = choose_device_index(read_launch_environment(), local_rank_, local_size_, count);
    } catch (const std::runtime_error& e) {
      throw CommError("NCCL backend: rank " + std::to_string(rank_) + ": " + e.what() +
                      " (check -np and CUDA_VISIBLE_DEVICES)");
    }
    if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA))
      throw CommError("NCCL backend: rank " + std::to_string(rank_) +
                      " sees a GPU but this program's LibTorch has no CUDA support; build ddprun against a CUDA "
                      "LibTorch (CMAKE_PREFIX_PATH) or use --backend mpi");
    device_ = c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
    check_cuda(cudaSetDevice(device_.index()), "cudaSetDevice");
  }

  // True for CPU tensors (they go to the bootstrap), false for tensors on this rank's GPU; anything else is refused.
  bool for_bootstrap(const char* kind, const std::vector<at::Tensor>& tensors) const {
    bool cpu = false, cuda = false;
    for (const at::Tensor& t : tensors) {
      if (!t.defined()) throw std::invalid_argument(std::string("NCCL ") + kind + ": undefined tensor");
      if (t.is_cpu()) {
        cpu = true;
      } else if (t.is_cuda()) {
        cuda = true;
        if (t.device() != device_)
          throw std::invalid_argument(std::string("NCCL ") + kind + ": a tensor is on " + t.device().str() +
                                      " but this rank's communicator works on " + device_.str());
      } else {
        throw std::invalid_argument(std::string("NCCL ") + kind + ": a tensor is on " + t.device().str() +
                                    "; this backend takes CUDA tensors (and CPU tensors, which go over MPI)");
      }
    }
    if (cpu && cuda)
      throw std::invalid_argument(std::string("NCCL ") + kind + ": one call mixes CPU and " + device_.str() +
                                  " tensors; pass them in separate calls");
    return !cuda;
  }

  // Whether the outputs are views laid end to end in memory, each `bytes` long and contiguous.
  static bool consecutive(const std::vector<at::Tensor>& outputs, size_t bytes) {
    const char* base = static_cast<const char*>(outputs[0].data_ptr());
    for (size_t r = 0; r < outputs.size(); ++r) {
      if (!outputs[r].is_contiguous() || static_cast<const char*>(outputs[r].data_ptr()) != base + r * bytes)
        return false;
    }
    return true;
  }

  // Issues one collective: the shape check (if on), the NCCL stream waits for the caller's stream, `enqueue` makes
  // the NCCL calls inside one group, the completion event is recorded, and the watchdog takes the collective.
  WorkHandle launch(const char* kind, const std::string& detail, const std::string& signature, Staged& staged,
                    const std::function<void()>& enqueue) {
    std::lock_guard<std::mutex> issuing(issue_mutex_);
    const uint64_t seq = ++seq_;
    if (options_.check_shapes) check_same_on_all_ranks(kind, seq, signature);

    DeviceScope scope(device_.index());
    auto collective = std::make_shared<Collective>();
    collective->description = std::string(kind) + " #" + std::to_string(seq) + " (" + detail + ")";
    check_cuda(cudaEventCreateWithFlags(&collective->done, cudaEventDisableTiming), "cudaEventCreateWithFlags");

    c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
    const c10::Stream producer = cuda.getStream(device_);
    cuda.record(&ready_event_, producer, device_.index(), c10::EventFlag::PYTORCH_DEFAULT);
    check_cuda(cudaStreamWaitEvent(stream_, static_cast<cudaEvent_t>(ready_event_), 0), "cudaStreamWaitEvent");

    check_nccl(ncclGroupStart(), "ncclGroupStart");
    try {
      enqueue();
    } catch (...) {
      ncclGroupEnd();
      throw;
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd", comm_);
    check_cuda(cudaEventRecord(collective->done, stream_), "cudaEventRecord");

    collective->issued = Clock::now();
    collective->buffers = staged.buffers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_flight_.push_back(collective);
    }
    return std::make_shared<NcclWork>(std::move(collective), producer, std::move(staged.copies));
  }

  void check_same_on_all_ranks(const char* kind, uint64_t seq, const std::string& signature) {
    const std::string mismatch = signature_mismatch(std::string("NCCL ") + kind + " #" + std::to_string(seq),
                                                    bootstrap_->allgather_bytes(signature));
    if (!mismatch.empty()) throw CommError(mismatch);
  }

  // Polls the in-flight collectives: retires the finished ones (in issue order: one stream runs them in that order),
  // and ends the job on an NCCL error, a CUDA error, or a collective older than the timeout.
  void watch() {
    if (cudaSetDevice(device_.index()) != cudaSuccess) return;
    const auto timeout = options_.timeout;
    // Finished collectives hold their tensors until retired here: look often, so memory returns soon.
    const auto period = std::min(watchdog_period(timeout), std::chrono::milliseconds(50));
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      watchdog_cv_.wait_for(lock, period);
      if (stop_) break;
      while (!in_flight_.empty()) {
        const cudaError_t rc = query_event(in_flight_.front()->done);
        if (rc == cudaErrorNotReady) break;
        if (rc == cudaErrorCudartUnloading) return;  // the process is exiting
        if (rc != cudaSuccess) {
          const std::string what = in_flight_.front()->description;
          lock.unlock();
          end_job("rank " + std::to_string(rank_) + ": NCCL " + what +
                  " failed: cudaEventQuery: " + cudaGetErrorString(rc));
        }
        in_flight_.front()->note_finished();
        in_flight_.front()->buffers.clear();
        in_flight_.pop_front();
      }
      if (aborting_) return;  // another thread is ending the job
      ncclResult_t async_error = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &async_error) == ncclSuccess && async_error != ncclSuccess &&
          async_error != ncclInProgress) {
        const std::string what = in_flight_.empty() ? "communicator" : in_flight_.front()->description;
        lock.unlock();
        std::string line =
            "rank " + std::to_string(rank_) + ": NCCL " + what + " failed: " + ncclGetErrorString(async_error);
        const char* detail = ncclGetLastError(comm_);
        if (detail && *detail) line += std::string(" (") + detail + ")";
        end_job(line);
      }
      if (timeout.count() > 0 && !in_flight_.empty() && Clock::now() - in_flight_.front()->issued > timeout) {
        const std::string what = in_flight_.front()->description;
        lock.unlock();
        end_job("rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": NCCL " + what +
                " did not complete within " + describe_duration(timeout));
      }
    }
  }

  [[noreturn]] void end_job(const std::string& line) {
    std::fprintf(stderr, "ddprun comm: %s; aborting the job\n", line.c_str());
    std::fflush(stderr);
    abort(1);
  }

  // Waits until the NCCL stream is idle or the timeout has passed; false if it is not idle.
  bool drain() {
    if (!stream_) return true;
    const Clock::time_point deadline = Clock::now() + options_.timeout;
    for (;;) {
      const cudaError_t rc = cudaStreamQuery(stream_);
      if (rc == cudaSuccess) return true;
      cudaGetLastError();
      if (rc != cudaErrorNotReady) return false;
      if (options_.timeout.count() > 0 && Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  // Frees the NCCL communicator (aborting it when collectives may still run), the stream and the events.
  void release(bool healthy) {
    if (comm_) {
      if (healthy) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
      comm_ = nullptr;
    }
    if (ready_event_) c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).destroyEvent(ready_event_, device_.index());
    ready_event_ = nullptr;
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    in_flight_.clear();
  }

  std::unique_ptr<Communicator> bootstrap_;
  CommOptions options_;
  int rank_, size_, local_rank_, local_size_;
  c10::Device device_;
  int nccl_version_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* ready_event_ = nullptr;  // a cudaEvent_t made by LibTorch's CUDA guard, re-recorded for every collective

  std::mutex issue_mutex_;  // one collective issued at a time, so sequence numbers follow the NCCL order
  uint64_t seq_ = 0;

  std::mutex mutex_;  // guards in_flight_ (and the buffers they hold) and stop_
  std::condition_variable watchdog_cv_;
  std::deque<std::shared_ptr<Collective>> in_flight_;
  bool stop_ = false;
  std::atomic<bool> aborting_{false};
  std::thread watchdog_;
};

}  // namespace

bool nccl_compiled_in() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> bootstrap,
                                                     const CommOptions& options) {
  if (!bootstrap) throw std::invalid_argument("make_nccl_communicator: no bootstrap communicator");
  return std::make_unique<NcclCommunicator>(std::move(bootstrap), options);
}

}  // namespace ddprun::comm
