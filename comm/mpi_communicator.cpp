// The MPI backend of Communicator: blocking MPI collectives on CPU tensors (other devices go through a host copy).
// Thread level: MPI_THREAD_FUNNELED; only the thread that created the communicator calls MPI.
#include "comm/communicator.h"

#include <ATen/ops/empty.h>
#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace ddprun::comm {
namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error(std::string(what) + " failed: " + std::string(text, len));
}

MPI_Datatype mpi_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
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
      throw std::invalid_argument(std::string("MPI allreduce: dtype ") + c10::toString(type) +
                                  " has no MPI type; use float32/64 or an integer type");
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Average:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

// MPI counts are int: reduce and broadcast in chunks of at most INT_MAX elements.
template <typename Fn>
void for_each_chunk(int64_t count, int64_t element_size, char* data, Fn fn) {
  for (int64_t done = 0; done < count;) {
    int n = static_cast<int>(std::min<int64_t>(count - done, INT_MAX));
    fn(data + done * element_size, n);
    done += n;
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns_mpi_ = true;
      if (provided < MPI_THREAD_FUNNELED)
        throw std::runtime_error("the MPI library offers no thread support (MPI_THREAD_FUNNELED is needed)");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check(MPI_Comm_dup(MPI_COMM_WORLD, &world_), "MPI_Comm_dup");
    MPI_Comm_rank(world_, &rank_);
    MPI_Comm_size(world_, &size_);
    check(MPI_Comm_split_type(world_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_), "MPI_Comm_split_type");
    MPI_Comm_rank(node_, &local_rank_);
    MPI_Comm_size(node_, &local_size_);
  }

  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;  // whoever started MPI has already ended it, and our communicators with it
    MPI_Comm_free(&node_);
    MPI_Comm_free(&world_);
    if (owns_mpi_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string backend_name() const override { return "mpi"; }

  void allreduce(std::vector<at::Tensor>& tensors, ReduceOp op) override {
    for (at::Tensor& tensor : tensors) {
      // float16/bfloat16 have no MPI type: reduce a float32 copy. Other devices: reduce a host copy.
      bool reduced_precision = tensor.scalar_type() == at::kHalf || tensor.scalar_type() == at::kBFloat16;
      bool direct = tensor.device().is_cpu() && tensor.is_contiguous() && !reduced_precision;
      at::Tensor buffer = direct ? tensor
                                 : tensor
                                       .to(at::Device(at::kCPU), reduced_precision ? at::kFloat : tensor.scalar_type(),
                                           /*non_blocking=*/false, /*copy=*/true)
                                       .contiguous();
      if (op == ReduceOp::Average && !at::isFloatingType(buffer.scalar_type()))
        throw std::invalid_argument("MPI allreduce: average needs a floating-point tensor, got " +
                                    std::string(c10::toString(tensor.scalar_type())));
      MPI_Datatype type = mpi_type(buffer.scalar_type());
      for_each_chunk(buffer.numel(), buffer.element_size(), static_cast<char*>(buffer.data_ptr()),
                     [&](char* data, int n) {
                       check(MPI_Allreduce(MPI_IN_PLACE, data, n, type, mpi_op(op), world_), "MPI_Allreduce");
                     });
      if (op == ReduceOp::Average) buffer.div_(size_);
      if (!direct) tensor.copy_(buffer);
    }
  }

  void broadcast(std::vector<at::Tensor>& tensors, int root) override {
    for (at::Tensor& tensor : tensors) {
      bool direct = tensor.device().is_cpu() && tensor.is_contiguous();
      at::Tensor buffer =
          direct ? tensor
                 : tensor.to(at::Device(at::kCPU), tensor.scalar_type(), /*non_blocking=*/false, /*copy=*/true)
                       .contiguous();
      for_each_chunk(buffer.nbytes(), 1, static_cast<char*>(buffer.data_ptr()),
                     [&](char* data, int n) { check(MPI_Bcast(data, n, MPI_BYTE, root, world_), "MPI_Bcast"); });
      if (!direct) tensor.copy_(buffer);
    }
  }

  std::vector<std::string> allgather_bytes(const std::string& bytes) override {
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

  void barrier() override { check(MPI_Barrier(world_), "MPI_Barrier"); }

  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 private:
  bool owns_mpi_ = false;
  MPI_Comm world_ = MPI_COMM_NULL;
  MPI_Comm node_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace ddprun::comm
