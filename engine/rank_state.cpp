// Capturing and restoring a rank's generator states, and moving them through the all-gather and the checkpoint.
#include "engine/rank_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/ops/empty.h>

#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>

namespace ddprun::engine {
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

RankState capture_rank_state(const c10::Device& device,
                             std::vector<std::pair<std::string, checkpoint::Value>> numbers) {
  RankState s;
  s.cpu_rng = state_of(at::detail::getDefaultCPUGenerator());
  if (!device.is_cpu()) s.device_rng = state_of(at::globalContext().defaultGenerator(device));
  s.numbers = std::move(numbers);
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
  const uint64_t count = state.numbers.size();
  put_bytes(out, &count, sizeof count);
  for (const auto& [name, value] : state.numbers) {
    const uint64_t length = name.size();
    put_bytes(out, &length, sizeof length);
    put_bytes(out, name.data(), name.size());
    const char is_int = value.is_int() ? 1 : 0;
    put_bytes(out, &is_int, 1);
    if (is_int) {
      const int64_t v = value.to_int();
      put_bytes(out, &v, sizeof v);
    } else {
      const double v = value.to_double();
      put_bytes(out, &v, sizeof v);
    }
  }
  return out;
}

RankState decode(const std::string& bytes) {
  Reader in(bytes);
  RankState s;
  s.cpu_rng = in.tensor();
  s.device_rng = in.tensor();
  uint64_t count = 0;
  in.get(&count, sizeof count);
  if (count > bytes.size()) throw std::runtime_error("a rank's state arrived corrupt");
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t length = 0;
    in.get(&length, sizeof length);
    if (length > bytes.size()) throw std::runtime_error("a rank's state arrived corrupt");
    std::string name(static_cast<size_t>(length), '\0');
    in.get(name.data(), name.size());
    char is_int = 0;
    in.get(&is_int, 1);
    if (is_int) {
      int64_t v = 0;
      in.get(&v, sizeof v);
      s.numbers.emplace_back(std::move(name), checkpoint::Value(v));
    } else {
      double v = 0;
      in.get(&v, sizeof v);
      s.numbers.emplace_back(std::move(name), checkpoint::Value(v));
    }
  }
  return s;
}

checkpoint::Value to_value(const RankState& state) {
  checkpoint::Value value = checkpoint::Value::dict(
      {{"cpu_rng_state", state.cpu_rng},
       {"device_rng_state", state.device_rng.defined() ? checkpoint::Value(state.device_rng) : checkpoint::Value()}});
  for (const auto& [name, number] : state.numbers) value.set(name, number);
  return value;
}

RankState from_value(const checkpoint::Value& value) {
  if (!value.is_mapping()) throw std::runtime_error("a rank's state is a " + std::string(value.kind_name()));
  RankState s;
  s.cpu_rng = value.at("cpu_rng_state").to_tensor().cpu();
  const checkpoint::Value& device = value.at("device_rng_state");
  if (!device.is_none()) s.device_rng = device.to_tensor().cpu();
  if (s.cpu_rng.scalar_type() != at::kByte || s.cpu_rng.dim() != 1)
    throw std::runtime_error("a rank's cpu_rng_state is not a 1-D uint8 tensor");
  for (const auto& [key, number] : value.entries()) {
    if (!key.is_string()) throw std::runtime_error("a rank's state has a key that is not a string");
    const std::string& name = key.to_string();
    if (name == "cpu_rng_state" || name == "device_rng_state") continue;
    const std::string what = "a rank's " + name;
    if (number.is_int()) {
      s.numbers.emplace_back(name, checkpoint::Value(number.to_int()));
    } else {
      const double v =
          number.to_double_in(-std::numeric_limits<double>::max(), std::numeric_limits<double>::max(), what);
      s.numbers.emplace_back(name, checkpoint::Value(v));
    }
  }
  return s;
}

}  // namespace ddprun::engine
