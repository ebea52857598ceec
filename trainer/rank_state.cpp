// Capturing and restoring a rank's generator states, and moving them through the all-gather and the checkpoint.
#include "trainer/rank_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/ops/empty.h>

#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>

namespace ddprun::trainer {
namespace {

at::Tensor state_of(const at::Generator& generator) {
  at::Generator g = generator;
  std::lock_guard<std::mutex> lock(g.mutex());
  return g.get_state();
}

void set_state(const at::Generator& generator, const at::Tensor& state) {
  at::Generator g = generator;
  std::lock_guard<std::mutex> lock(g.mutex());
  g.set_state(state);
}

void put_bytes(std::string& out, const void* data, size_t n) { out.append(static_cast<const char*>(data), n); }

void put_tensor(std::string& out, const at::Tensor& t) {
  const int64_t n = t.defined() ? t.numel() : -1;
  put_bytes(out, &n, sizeof n);
  if (n > 0) put_bytes(out, t.contiguous().data_ptr(), static_cast<size_t>(n));
}

class Reader {
 public:
  explicit Reader(const std::string& bytes) : bytes_(bytes) {}
  void get(void* data, size_t n) {
    if (bytes_.size() - pos_ < n) throw std::runtime_error("a rank's state arrived truncated");
    std::memcpy(data, bytes_.data() + pos_, n);
    pos_ += n;
  }
  at::Tensor tensor() {
    int64_t n = 0;
    get(&n, sizeof n);
    if (n < 0) return {};
    if (static_cast<uint64_t>(n) > bytes_.size()) throw std::runtime_error("a rank's state arrived corrupt");
    at::Tensor t = at::empty({n}, at::kByte);
    get(t.data_ptr(), static_cast<size_t>(n));
    return t;
  }

 private:
  const std::string& bytes_;
  size_t pos_ = 0;
};

}  // namespace

RankState capture_rank_state(const c10::Device& device, double loss_sum, int64_t samples) {
  RankState s;
  s.cpu_rng = state_of(at::detail::getDefaultCPUGenerator());
  if (!device.is_cpu()) s.device_rng = state_of(at::globalContext().defaultGenerator(device));
  s.loss_sum = loss_sum;
  s.samples = samples;
  return s;
}

void restore_rng(const RankState& state, const c10::Device& device) {
  if (device.is_cpu() != !state.device_rng.defined())
    throw std::runtime_error(std::string("the checkpoint's random states come from ") +
                             (state.device_rng.defined() ? "GPU" : "CPU") + " ranks and this rank trains on " +
                             device.str() + "; an exact resume needs the same kind of device");
  set_state(at::detail::getDefaultCPUGenerator(), state.cpu_rng);
  if (!device.is_cpu()) set_state(at::globalContext().defaultGenerator(device), state.device_rng);
}

std::string encode(const RankState& state) {
  std::string out;
  put_tensor(out, state.cpu_rng);
  put_tensor(out, state.device_rng);
  put_bytes(out, &state.loss_sum, sizeof state.loss_sum);
  put_bytes(out, &state.samples, sizeof state.samples);
  return out;
}

RankState decode(const std::string& bytes) {
  Reader in(bytes);
  RankState s;
  s.cpu_rng = in.tensor();
  s.device_rng = in.tensor();
  in.get(&s.loss_sum, sizeof s.loss_sum);
  in.get(&s.samples, sizeof s.samples);
  return s;
}

checkpoint::Value to_value(const RankState& state) {
  return checkpoint::Value::dict(
      {{"cpu_rng_state", state.cpu_rng},
       {"device_rng_state", state.device_rng.defined() ? checkpoint::Value(state.device_rng) : checkpoint::Value()},
       {"train_loss_sum", state.loss_sum},
       {"train_samples", state.samples}});
}

RankState from_value(const checkpoint::Value& value) {
  RankState s;
  s.cpu_rng = value.at("cpu_rng_state").to_tensor().cpu();
  const checkpoint::Value& device = value.at("device_rng_state");
  if (!device.is_none()) s.device_rng = device.to_tensor().cpu();
  if (s.cpu_rng.scalar_type() != at::kByte || s.cpu_rng.dim() != 1)
    throw std::runtime_error("a rank's cpu_rng_state is not a 1-D uint8 tensor");
  s.loss_sum =
      value.at("train_loss_sum").to_double_in(0, std::numeric_limits<double>::max(), "a rank's train_loss_sum");
  s.samples = value.at("train_samples").to_int_in(0, int64_t{1} << 40, "a rank's train_samples");
  return s;
}

}  // namespace ddprun::trainer
