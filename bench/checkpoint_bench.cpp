// checkpoint_bench: one save and one load of a checkpoint-sized state, timed, with the peak memory each adds.
// scripts/bench/checkpoint.sh runs it for each implementation in turn, beside Python's torch.save/torch.load.
//
//   checkpoint_bench --op save --impl ddprun|ddprun-async|raw --state big|resnet18 [--bytes N] --dir DIR
//   checkpoint_bench --op load --impl ddprun|raw --state big|resnet18 --cache cold|warm --dir DIR
//
// Each op runs in a process of its own, as a resume does. A save leaves its file for the loads (the script removes
// it). A load is finished when the values are in their destination: tensors of the saved shapes (a resume's model
// and optimizer), allocated and written before the clock starts; raw reads the file with read() into such a buffer.
// cold: the file is dropped from the page cache first (the disk is read); warm: it is read once before.
// big: an OrderedDict of 64 float32 tensors totalling N bytes (default 1 GiB). resnet18: {"model", "optimizer"
// (SGD with momentum, after one step), "epoch"}, as ddptrain saves it.
// ddprun: checkpoint::save (temporary file, fsync, rename, fsync folder), then checkpoint::load.
// ddprun-async: AsyncSaver::save (the stall: the snapshot into host memory) and its wait (the write), twice: the
// second save, which reuses the first one's host buffers as training's later saves do, is the figure;
// "first_stall_s" is the first one's stall (it allocates the buffers).
// raw: the bytes of the file ddprun writes, written with plain write() and fsync() and read back with read() into one
// buffer: the disk's ceiling.
// Prints one JSON object per op: {"impl", "state", "op", "bytes", "seconds", "GBps", "peak_extra_bytes", "stall_s"},
// for a load also "cache" and, for ddprun, where the time went: "load_s" (checkpoint::load: the directory, one read
// of every record through a small buffer with its CRC-32, the mapping, the unpickling), "copy_s" (each tensor
// copied from the mapping into its destination: the mapping's pages are mapped then) and "crc_s" (the CRC-32's
// computation alone for as many bytes as the file holds, on a 1 MiB buffer in cache, as load() checks records).
// peak_extra_bytes: the process's peak resident memory during the op above what it held before (for a load, the
// destination is held before; a mapped file's pages count; for ddprun-async, "before" already holds the snapshot
// buffers kept from the first save, which are the size of the state).
#include "checkpoint/async_saver.h"
#include "checkpoint/module_state.h"
#include "checkpoint/torch_file.h"
#include "checkpoint/zip_directory.h"
#include "engine/optimizer_state.h"
#include "trainer/host_memory.h"
#include "trainer/models.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

using ddprun::checkpoint::Value;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM").
int64_t status_bytes(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(status, line)) {
    if (line.rfind(prefix, 0) == 0) return std::atoll(line.c_str() + prefix.size()) * 1024;
  }
  return -1;
}

// Resets the peak resident size (VmHWM) to the current one, so that the next reading is the peak of what follows.
void reset_peak() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}

Value big_state(int64_t bytes) {
  const int64_t tensors = 64, numel = bytes / tensors / 4;
  Value model = Value::ordered_dict();
  for (int64_t i = 0; i < tensors; ++i)
    model.set("layer" + std::to_string(i) + ".weight", at::randn({numel}, at::kFloat));
  return model;
}

Value resnet18_state() {
  torch::manual_seed(1);
  auto model = ddprun::trainer::make_model("resnet18");
  auto optimizer = std::make_unique<torch::optim::SGD>(model->parameters(),
                                                       torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  const at::Tensor images = at::randn({2, 1, 28, 28});
  at::nll_loss(model->forward(images), at::randint(10, {2}, at::kLong)).backward();
  optimizer->step();
  return Value::dict({{"model", ddprun::checkpoint::module_state_dict(*model)},
                      {"optimizer", ddprun::engine::optimizer_state_dict(*optimizer, std::nullopt)},
                      {"epoch", 0}});
}

void print(const std::string& impl, const std::string& state, const char* op, int64_t bytes, double seconds,
           int64_t peak_extra, double stall, double first_stall = -1, const std::string& more = "") {
  const std::string first = (first_stall < 0 ? "" : ", \"first_stall_s\": " + std::to_string(first_stall)) + more;
  std::printf(
      "{\"impl\": \"%s\", \"state\": \"%s\", \"op\": \"%s\", \"bytes\": %lld, \"seconds\": %.4f, \"GBps\": %.4f, "
      "\"peak_extra_bytes\": %lld, \"stall_s\": %.4f%s}\n",
      impl.c_str(), state.c_str(), op, static_cast<long long>(bytes), seconds,
      static_cast<double>(bytes) / seconds / 1e9, static_cast<long long>(peak_extra), stall, first.c_str());
  std::fflush(stdout);
}

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "checkpoint_bench: %s\n", message.c_str());
  std::exit(1);
}

// Evicts the file's pages from the page cache (they are clean: every save fsyncs), so that a load reads the disk,
// as a resume on another node would.
void drop_from_page_cache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fdatasync(fd) != 0 || ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0)
    die("cannot drop " + path + " from the page cache: " + std::strerror(errno));
  ::close(fd);
}

int64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

// The bytes of `source` written to `target` with write() in 8 MiB pieces from one buffer, then fsync.
double raw_save(const char* bytes, size_t size, const std::string& target) {
  const auto start = Clock::now();
  const int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die("cannot create " + target + ": " + std::strerror(errno));
  for (size_t done = 0; done < size;) {
    const ssize_t w = ::write(fd, bytes + done, std::min<size_t>(8 << 20, size - done));
    if (w <= 0) die("write " + target + ": " + std::strerror(errno));
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) die("fsync " + target + ": " + std::strerror(errno));
  return since(start);
}

// The whole file read once through a 64 MiB buffer (kept, so no fresh memory is touched): its pages are then in the
// page cache, recently used.
void read_through(const std::string& path) {
  static std::unique_ptr<char[]> buffer(new char[size_t{64} << 20]);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("cannot open " + path + ": " + std::strerror(errno));
  for (;;) {
    const ssize_t r = ::read(fd, buffer.get(), size_t{64} << 20);
    if (r < 0) die("read " + path + ": " + std::strerror(errno));
    if (r == 0) break;
  }
  ::close(fd);
}

// The whole file read with read() into `into` (size bytes).
void read_into(const std::string& path, char* into, size_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("cannot open " + path + ": " + std::strerror(errno));
  for (size_t done = 0; done < size;) {
    const ssize_t r = ::read(fd, into + done, size - done);
    if (r <= 0) die("read " + path + ": " + std::strerror(errno));
    done += static_cast<size_t>(r);
  }
  ::close(fd);
}

// The whole file read with read() into one new (uninitialized) buffer.
double raw_load(const std::string& path, std::unique_ptr<char[]>& into, size_t& size) {
  const auto start = Clock::now();
  size = static_cast<size_t>(file_size(path));
  into.reset(new char[size]);
  read_into(path, into.get(), size);
  return since(start);
}

// A destination tensor shaped and typed like `t`, holding other values than `t`, no two pages alike, as a resume's
// freshly initialized model and optimizer do.
at::Tensor distinct_values(const at::Tensor& t) { return t.is_floating_point() ? t.mul(-0.5).add(1) : t.add(1); }

// The tensors of a loaded state, in a fixed order.
void tensors_of(const Value& v, std::vector<at::Tensor>& out) {
  if (v.is_tensor()) out.push_back(v.to_tensor());
  if (v.is_sequence())
    for (const Value& item : v.items()) tensors_of(item, out);
  if (v.is_mapping())
    for (const auto& entry : v.entries()) tensors_of(entry.second, out);
}

}  // namespace

int main(int argc, char** argv) {
  std::string op, impl, state_name = "big", dir, cache = "cold";
  int64_t bytes = int64_t{1} << 30;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) die("flag " + flag + " has no value");
    const std::string value = argv[i + 1];
    if (flag == "--op")
      op = value;
    else if (flag == "--impl")
      impl = value;
    else if (flag == "--state")
      state_name = value;
    else if (flag == "--bytes")
      bytes = std::atoll(value.c_str());
    else if (flag == "--dir")
      dir = value;
    else if (flag == "--cache")
      cache = value;
    else
      die("unknown flag " + flag + " (--op, --impl, --state, --bytes, --cache, --dir)");
  }
  if (op != "save" && op != "load") die("--op must be save or load");
  if (impl != "ddprun" && impl != "ddprun-async" && impl != "raw") die("--impl must be ddprun, ddprun-async or raw");
  if (op == "load" && impl == "ddprun-async") die("--op load has no async form: use --impl ddprun");
  if (state_name != "big" && state_name != "resnet18") die("--state must be big or resnet18");
  if (dir.empty()) die("--dir is required");
  if (cache != "cold" && cache != "warm") die("--cache must be cold or warm");
  ddprun::trainer::keep_freed_host_memory();
  const std::string path = dir + "/" + state_name + "-" + impl + ".pth";

  try {
    if (op == "load") {
      const int64_t file_bytes = file_size(path);
      if (file_bytes < 0) die("no " + path + ": run --op save --impl " + impl + " first");
      const auto size = static_cast<size_t>(file_bytes);
      // The destination, written before the clock starts, as a resume's model and optimizer are.
      at::Tensor raw_destination;  // from the same allocator as ddprun's destination
      std::vector<at::Tensor> destination;
      if (impl == "raw") {
        // 8-byte counters: every page differs, as an initialized model's do (see distinct_values).
        raw_destination = distinct_values(at::arange(static_cast<int64_t>((size + 7) / 8), at::kLong));
      } else {
        std::vector<at::Tensor> saved;
        tensors_of(ddprun::checkpoint::load(path), saved);
        for (const at::Tensor& t : saved) destination.push_back(distinct_values(t));
      }
      if (cache == "cold") {
        drop_from_page_cache(path);
      } else {
        read_through(path);
      }
      reset_peak();
      const int64_t before = status_bytes("VmRSS");
      const auto start = Clock::now();
      std::string breakdown;
      if (impl == "raw") {
        read_into(path, static_cast<char*>(raw_destination.data_ptr()), size);
      } else {
        const Value loaded = ddprun::checkpoint::load(path);
        const double load_s = since(start);
        std::vector<at::Tensor> values;
        tensors_of(loaded, values);
        if (values.size() != destination.size()) die("the state changed between two loads of " + path);
        for (size_t i = 0; i < values.size(); ++i) destination[i].copy_(values[i]);
        breakdown =
            ", \"load_s\": " + std::to_string(load_s) + ", \"copy_s\": " + std::to_string(since(start) - load_s);
      }
      const double seconds = since(start);
      const int64_t peak_extra = status_bytes("VmHWM") - before;
      if (impl != "raw") {  // the check's computation alone: the file's size in bytes, CRC'd in a 1 MiB buffer in cache
        std::vector<char> piece(size_t{1} << 20, 1);
        volatile uint32_t crc = ddprun::checkpoint::crc32_of(piece.data(), piece.size());  // the buffer in cache
        const auto crc_start = Clock::now();
        for (size_t done = 0; done < size; done += piece.size())
          crc = ddprun::checkpoint::crc32_update(crc, piece.data(), std::min(piece.size(), size - done));
        breakdown += ", \"crc_s\": " + std::to_string(since(crc_start));
      }
      print(impl, state_name, "load", file_bytes, seconds, peak_extra, 0, -1,
            ", \"cache\": \"" + cache + "\"" + breakdown);
      return 0;
    }

    const Value state = state_name == "big" ? big_state(bytes) : resnet18_state();
    if (impl == "raw") {
      // The bytes ddprun writes, so that both move exactly as much data.
      ddprun::checkpoint::save(state, path);
      std::unique_ptr<char[]> file;
      size_t size = 0;
      raw_load(path, file, size);
      reset_peak();
      const int64_t before = status_bytes("VmRSS");
      const double save_s = raw_save(file.get(), size, path);
      print(impl, state_name, "save", static_cast<int64_t>(size), save_s, status_bytes("VmHWM") - before, save_s);
      return 0;
    }
    reset_peak();
    int64_t before = status_bytes("VmRSS");
    auto start = Clock::now();
    double stall = 0, first_stall = -1;
    if (impl == "ddprun") {
      // DDPRUN_BENCH_STAGES=1: when each stage of the atomic write ended, on stderr.
      ddprun::checkpoint::WriteStageHook hook;
      if (std::getenv("DDPRUN_BENCH_STAGES") != nullptr)
        hook = [start](ddprun::checkpoint::WriteStage s) {
          std::fprintf(stderr, "  %-13s %.4f s\n", ddprun::checkpoint::to_string(s), since(start));
        };
      ddprun::checkpoint::save(state, path, hook);
      stall = since(start);
    } else {
      // Training saves the same state again and again: the first snapshot allocates the host buffers, the later
      // ones reuse them. The figure is the second save; the first one's stall is printed beside it.
      ddprun::checkpoint::AsyncSaver saver;
      saver.save(state, {path});
      first_stall = since(start);
      saver.wait();
      reset_peak();
      before = status_bytes("VmRSS");
      start = Clock::now();
      saver.save(state, {path});
      stall = since(start);
      saver.wait();
    }
    const double save_s = since(start);
    print(impl, state_name, "save", file_size(path), save_s, status_bytes("VmHWM") - before, stall, first_stall);
    if (impl == "ddprun-async") ::unlink(path.c_str());  // nothing loads it
  } catch (const std::exception& e) {
    die(e.what());
  }
  return 0;
}
