// The zip container of torch.save files: save() pickles a Value and writes data.pkl plus one record per storage
// through PyTorchStreamWriter into a temporary file it owns, then fsyncs and renames it into place; load() opens
// the zip with PyTorchStreamReader and unpickles data.pkl, fetching each storage record as the pickle asks for it.
#include "checkpoint/torch_file.h"

#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"

#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
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

// Sequential writes to a file descriptor, for PyTorchStreamWriter. The writer cannot be told of an error without
// being left unfinished (and its destructor would then throw), so the first error is kept, later writes are
// dropped, and save() checks error() once the writer is done.
class FdSink {
 public:
  explicit FdSink(int fd) : fd_(fd) {}
  size_t write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    size_t left = error_ == 0 ? n : 0;
    while (left > 0) {
      const ssize_t w = ::write(fd_, p, left);
      if (w < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
        break;
      }
      p += w;
      left -= static_cast<size_t>(w);
    }
    return n;
  }
  int error() const { return error_; }

 private:
  int fd_;
  int error_ = 0;
};

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

// fsyncs the folder that holds `path`, so that a rename into it survives a crash.
void sync_parent_folder(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open folder '" + folder + "': " + errno_text(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != ENOTSUP) {
    throw std::runtime_error("cannot fsync folder '" + folder + "': " + errno_text(err));
  }
}

std::tuple<at::DataPtr, size_t> get_record(PyTorchStreamReader& zip, const std::string& name) {
  try {
    return zip.getRecord(name);
  } catch (const std::exception& e) {
    throw std::runtime_error("record '" + name + "' is truncated or corrupt (" + message_of(e) + ")");
  }
}

}  // namespace

void save(const Value& object, const std::string& path) {
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  int fd = -1;
  bool temp_exists = false;
  try {
    const Pickle pickle = write_pickle(object);
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd < 0) throw std::runtime_error("cannot create '" + temp + "': " + errno_text(errno));
    temp_exists = true;
    FdSink sink(fd);
    {
      PyTorchStreamWriter zip([&sink](const void* data, size_t n) { return sink.write(data, n); });
      zip.writeRecord("data.pkl", pickle.bytes.data(), pickle.bytes.size());
      zip.writeRecord("byteorder", "little", 6);  // what PyTorch 2.x writes; tensor data is little-endian
      for (const StorageRecord& record : pickle.storages) {
        if (sink.error() != 0) break;
        write_storage(zip, record);
      }
      zip.writeEndOfFile();
    }
    if (sink.error() != 0) throw std::runtime_error(errno_text(sink.error()));
    if (::fsync(fd) != 0) throw std::runtime_error("fsync: " + errno_text(errno));
    const int rc = ::close(fd);
    fd = -1;
    if (rc != 0) throw std::runtime_error("close: " + errno_text(errno));
    if (::rename(temp.c_str(), path.c_str()) != 0) {
      throw std::runtime_error("cannot rename '" + temp + "' over it: " + errno_text(errno));
    }
    temp_exists = false;
    sync_parent_folder(path);
  } catch (const std::exception& e) {
    if (fd >= 0) ::close(fd);
    if (temp_exists) ::unlink(temp.c_str());
    throw CheckpointError("cannot write checkpoint '" + path + "': " + message_of(e));
  }
}

Value load(const std::string& path, const c10::Device& map_location) {
  const std::string prefix = "cannot read checkpoint '" + path + "': ";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw CheckpointError(prefix + errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    const int err = S_ISDIR(st.st_mode) ? EISDIR : errno;
    ::close(fd);
    throw CheckpointError(prefix + errno_text(err));
  }
  const auto file = std::make_shared<FdSource>(fd, static_cast<size_t>(st.st_size));

  char magic[4];
  if (file->read(0, magic, sizeof magic, "") != sizeof magic || std::memcmp(magic, "PK\x03\x04", 4) != 0) {
    throw CheckpointError("'" + path + "' is not a PyTorch checkpoint (not a zip file written by torch.save)");
  }
  std::unique_ptr<PyTorchStreamReader> zip;
  try {
    zip = std::make_unique<PyTorchStreamReader>(file);
  } catch (const std::exception& e) {
    throw CheckpointError(prefix + "the file is truncated or corrupt (" + message_of(e) + ")");
  }

  try {
    if (!zip->hasRecord("data.pkl")) throw std::runtime_error("it has no data.pkl record (not written by torch.save)");
    auto [pickle, pickle_size] = get_record(*zip, "data.pkl");
    const StorageLoader loader = [&](const std::string& key, c10::ScalarType dtype, int64_t numel) {
      const std::string name = "data/" + key;
      if (!zip->hasRecord(name)) throw std::runtime_error("record '" + name + "' is missing");
      uint64_t nbytes;
      if (__builtin_mul_overflow(static_cast<uint64_t>(numel), c10::elementSize(dtype), &nbytes) ||
          nbytes > file->size()) {
        throw std::runtime_error("record '" + name + "' is truncated: the pickle needs " + std::to_string(numel) +
                                 " elements, more than the file holds");
      }
      auto [data, size] = get_record(*zip, name);
      if (size < nbytes) {
        throw std::runtime_error("record '" + name + "' is truncated: it holds " + std::to_string(size) +
                                 " bytes, the pickle needs " + std::to_string(nbytes));
      }
      c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(nbytes), std::move(data), nullptr,
                           false);
      at::Tensor t = at::empty({0}, at::TensorOptions().dtype(dtype)).set_(storage, 0, {numel}, {1});
      if (!map_location.is_cpu()) t = t.to(t.options().device(map_location));
      return t;
    };
    return read_pickle(pickle.get(), pickle_size, loader);
  } catch (const std::exception& e) {
    throw CheckpointError(prefix + message_of(e));
  }
}

}  // namespace ddprun::checkpoint
