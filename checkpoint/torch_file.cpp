// The zip container of torch.save files: save() pickles a Value and writes data.pkl plus one record per storage
// through PyTorchStreamWriter into a temporary file it owns, then fsyncs and renames it into place; load() opens
// the zip with PyTorchStreamReader and unpickles data.pkl, fetching each storage record as the pickle asks for it.
#include "checkpoint/torch_file.h"

#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"
#include "checkpoint/zip_checksums.h"

#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

namespace ddprun::checkpoint {
namespace {

using caffe2::serialize::PyTorchStreamReader;
using caffe2::serialize::PyTorchStreamWriter;

std::string errno_text(int err) { return std::strerror(err); }

// The first line of an exception's message (a c10::Error carries a backtrace after it).
std::string message_of(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string m = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
  if (const size_t nl = m.find('\n'); nl != std::string::npos) m.resize(nl);
  return m;
}

// Positioned reads from a file descriptor it owns, for PyTorchStreamReader.
class FdSource final : public caffe2::serialize::ReadAdapterInterface {
 public:
  FdSource(int fd, size_t size) : fd_(fd), size_(size) {}
  ~FdSource() override { ::close(fd_); }
  FdSource(const FdSource&) = delete;
  FdSource& operator=(const FdSource&) = delete;

  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    size_t done = 0;
    while (done < n) {
      const ssize_t r = ::pread(fd_, static_cast<char*>(buf) + done, n - done, static_cast<off_t>(pos + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
    return done;
  }

 private:
  int fd_;
  size_t size_;
};

// Reads from a buffer the caller keeps alive, for PyTorchStreamReader.
class MemorySource final : public caffe2::serialize::ReadAdapterInterface {
 public:
  MemorySource(const void* data, size_t size) : data_(static_cast<const char*>(data)), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= size_ || n == 0) return 0;
    n = std::min<size_t>(n, size_ - pos);
    std::memcpy(buf, data_ + pos, n);
    return n;
  }

 private:
  const char* data_;
  size_t size_;
};

// Writes the whole storage behind record.tensor as "data/<key>": straight from memory for a CPU tensor, through a
// CPU copy of that one storage otherwise.
void write_storage(PyTorchStreamWriter& zip, const StorageRecord& record) {
  static const char kEmpty = 0;
  const std::string name = "data/" + record.key;
  const size_t nbytes = static_cast<size_t>(record.numel) * c10::elementSize(record.dtype);
  if (record.tensor.device().is_cpu()) {
    const void* data = record.tensor.storage().data_ptr().get();
    zip.writeRecord(name, nbytes != 0 ? data : &kEmpty, nbytes);
    return;
  }
  const at::Tensor whole =
      at::empty({0}, record.tensor.options()).set_(record.tensor.storage(), 0, {record.numel}, {1});
  const at::Tensor cpu = whole.cpu();
  zip.writeRecord(name, nbytes != 0 ? cpu.data_ptr() : &kEmpty, nbytes);
}

// A record's bytes, checked against the CRC-32 the zip directory gives for it.
std::tuple<at::DataPtr, size_t> get_record(PyTorchStreamReader& zip, const std::string& name,
                                           const std::unordered_map<std::string, uint32_t>& checksums) {
  std::tuple<at::DataPtr, size_t> record;
  try {
    record = zip.getRecord(name);
  } catch (const std::exception& e) {
    throw std::runtime_error("record '" + name + "' is truncated or corrupt (" + message_of(e) + ")");
  }
  const auto expected = checksums.find(name);
  const uint32_t actual = crc32_of(std::get<0>(record).get(), std::get<1>(record));
  if (expected == checksums.end() || expected->second != actual) {
    char text[96];
    std::snprintf(text, sizeof text, "its CRC-32 is %08x, the zip directory says %08x", actual,
                  expected == checksums.end() ? 0U : expected->second);
    throw std::runtime_error("record '" + name + "' is corrupt (" + text + ")");
  }
  return record;
}

// Opens the zip in `source` and unpickles data.pkl, fetching each storage record as the pickle asks for it.
Value load_zip(const std::shared_ptr<caffe2::serialize::ReadAdapterInterface>& source, const std::string& name,
               const MapLocation& map_location) {
  const std::string prefix = "cannot read checkpoint '" + name + "': ";
  char magic[4];
  if (source->read(0, magic, sizeof magic, "") != sizeof magic || std::memcmp(magic, "PK\x03\x04", 4) != 0) {
    throw CheckpointError("'" + name + "' is not a PyTorch checkpoint (not a zip file written by torch.save)");
  }
  std::unique_ptr<PyTorchStreamReader> zip;
  try {
    zip = std::make_unique<PyTorchStreamReader>(source);
  } catch (const std::exception& e) {
    throw CheckpointError(prefix + "the file is truncated or corrupt (" + message_of(e) + ")");
  }

  try {
    if (!zip->hasRecord("data.pkl")) throw std::runtime_error("it has no data.pkl record (not written by torch.save)");
    std::unordered_map<std::string, uint32_t> checksums;
    try {
      checksums = zip_record_checksums(*source);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("the file is truncated or corrupt (") + e.what() + ")");
    }
    auto [pickle, pickle_size] = get_record(*zip, "data.pkl", checksums);
    const StorageLoader loader = [&](const std::string& key, const std::string& location, c10::ScalarType dtype,
                                     int64_t numel) {
      const std::string record = "data/" + key;
      if (!zip->hasRecord(record)) throw std::runtime_error("record '" + record + "' is missing");
      uint64_t nbytes;
      if (__builtin_mul_overflow(static_cast<uint64_t>(numel), c10::elementSize(dtype), &nbytes) ||
          nbytes > source->size()) {
        throw std::runtime_error("record '" + record + "' is truncated: the pickle needs " + std::to_string(numel) +
                                 " elements, more than the file holds");
      }
      const c10::Device device = map_location.device_for(location);
      auto [data, size] = get_record(*zip, record, checksums);
      if (size < nbytes) {
        throw std::runtime_error("record '" + record + "' is truncated: it holds " + std::to_string(size) +
                                 " bytes, the pickle needs " + std::to_string(nbytes));
      }
      c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(nbytes), std::move(data), nullptr,
                           false);
      at::Tensor t = at::empty({0}, at::TensorOptions().dtype(dtype)).set_(storage, 0, {numel}, {1});
      if (!device.is_cpu()) {
        try {
          t = t.to(t.options().device(device));
        } catch (const std::exception& e) {
          throw std::runtime_error("cannot place storage '" + key + "' (saved on " + location + ") on " + device.str() +
                                   ": " + message_of(e) + "; give a map_location for this machine");
        }
      }
      return t;
    };
    return read_pickle(pickle.get(), pickle_size, loader);
  } catch (const std::exception& e) {
    throw CheckpointError(prefix + message_of(e));
  }
}

// A device from its text ("cpu", "cuda:0"); std::invalid_argument naming `what` when it is not one.
c10::Device parse_device(const std::string& text, const std::string& what) {
  try {
    return c10::Device(text);
  } catch (const std::exception&) {
    throw std::invalid_argument(what + " '" + text + "' is not a device (cpu, cuda or cuda:<index>)");
  }
}

}  // namespace

MapLocation MapLocation::parse(const std::string& mapping, c10::Device default_device) {
  MapLocation result(default_device);
  size_t begin = 0;
  while (begin <= mapping.size()) {
    size_t end = mapping.find(',', begin);
    if (end == std::string::npos) end = mapping.size();
    const std::string part = mapping.substr(begin, end - begin);
    const size_t eq = part.find('=');
    if (eq == std::string::npos)
      throw std::invalid_argument("map_location entry '" + part + "' is not FROM=TO (like cuda:1=cuda:0)");
    result.mapping_.emplace_back(parse_device(part.substr(0, eq), "map_location source"),
                                 parse_device(part.substr(eq + 1), "map_location target"));
    begin = end + 1;
  }
  return result;
}

c10::Device MapLocation::device_for(const std::string& saved_location) const {
  for (const auto& [from, to] : mapping_) {
    // "cuda" in a mapping stands for every CUDA device, as a saved "cuda" means cuda:0 to torch.load.
    if (saved_location == from.str() || (!from.has_index() && saved_location.rfind(from.str(), 0) == 0)) return to;
  }
  return default_;
}

std::string MapLocation::to_string() const {
  std::string text;
  for (const auto& [from, to] : mapping_) text += from.str() + "=" + to.str() + ", ";
  return text + (mapping_.empty() ? "everything to " : "others to ") + default_.str();
}

void save(const Value& object, const std::string& path, const WriteStageHook& hook) {
  try {
    const Pickle pickle = write_pickle(object);
    size_t bytes = pickle.bytes.size();
    for (const StorageRecord& record : pickle.storages)
      bytes += static_cast<size_t>(record.numel) * c10::elementSize(record.dtype);
    AtomicFile file(path, hook, bytes);
    {
      PyTorchStreamWriter zip([&file](const void* data, size_t n) {
        file.write(data, n);
        return n;
      });
      zip.writeRecord("data.pkl", pickle.bytes.data(), pickle.bytes.size());
      zip.writeRecord("byteorder", "little", 6);  // what PyTorch 2.x writes; tensor data is little-endian
      for (const StorageRecord& record : pickle.storages) write_storage(zip, record);
      zip.writeEndOfFile();
    }
    file.commit();
  } catch (const std::exception& e) {
    throw CheckpointError("cannot write checkpoint '" + path + "': " + message_of(e));
  }
}

void save_as(const Value& object, const std::vector<std::string>& paths, const WriteStageHook& hook) {
  save(object, paths.at(0), hook);
  for (size_t i = 1; i < paths.size(); ++i) {
    try {
      copy_file_atomically(paths[0], paths[i], hook);
    } catch (const std::exception& e) {
      throw CheckpointError("cannot write checkpoint '" + paths[i] + "': " + message_of(e));
    }
  }
}

Value load(const std::string& path, const MapLocation& map_location) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw CheckpointError("cannot read checkpoint '" + path + "': " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    const int err = S_ISDIR(st.st_mode) ? EISDIR : errno;
    ::close(fd);
    throw CheckpointError("cannot read checkpoint '" + path + "': " + errno_text(err));
  }
  return load_zip(std::make_shared<FdSource>(fd, static_cast<size_t>(st.st_size)), path, map_location);
}

Value load_from_memory(const void* data, size_t size, const std::string& name, const MapLocation& map_location) {
  return load_zip(std::make_shared<MemorySource>(data, size), name, map_location);
}

}  // namespace ddprun::checkpoint
