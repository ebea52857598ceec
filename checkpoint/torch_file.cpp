// The zip container of torch.save files: save() pickles a Value and writes data.pkl plus one record per storage
// through PyTorchStreamWriter into atomic files (atomic_file.h); load() reads and checks the zip directory with pread,
// reads every record once to check its CRC-32, then maps the file and unpickles data.pkl, each storage pointing at
// its record.
#include "checkpoint/torch_file.h"

#include "checkpoint/pickle_reader.h"
#include "checkpoint/pickle_writer.h"
#include "checkpoint/zip_directory.h"

#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>

#include <fcntl.h>
#include <sys/mman.h>
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
#include <vector>

namespace ddprun::checkpoint {
namespace {

using caffe2::serialize::PyTorchStreamWriter;

std::string errno_text(int err) { return std::strerror(err); }

// The first line of an exception's message (a c10::Error carries a backtrace after it).
std::string message_of(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string m = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
  if (const size_t nl = m.find('\n'); nl != std::string::npos) m.resize(nl);
  return m;
}

// Reads `size` bytes at `offset` of `fd` into `buffer`; false (errno set) when it cannot.
bool read_at(int fd, char* buffer, size_t size, uint64_t offset) {
  size_t done = 0;
  while (done < size) {
    const ssize_t r = ::pread(fd, buffer + done, size - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = EIO;  // the file shrank
      return false;
    }
    done += static_cast<size_t>(r);
  }
  return true;
}

// Reads a file with pread, for the zip directory's checks before anything is mapped.
class FileSource final : public caffe2::serialize::ReadAdapterInterface {
 public:
  FileSource(int fd, size_t size) : fd_(fd), size_(size) {}
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

// Reads from a buffer the caller keeps alive.
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

// Refuses record `name` when `actual`, the CRC-32 of its bytes, is not the one the zip directory gives.
void check_crc(const std::string& name, const ZipRecord& record, uint32_t actual) {
  if (actual == record.crc32) return;
  char text[96];
  std::snprintf(text, sizeof text, "its CRC-32 is %08x, the zip directory says %08x", actual, record.crc32);
  throw std::runtime_error("record '" + name + "' is corrupt (" + text + ")");
}

// The bytes of record `name`, checked against the CRC-32 the zip directory gives for it unless `verified` (every
// record was checked already).
std::pair<const char*, size_t> record_bytes(const char* file, const std::unordered_map<std::string, ZipRecord>& records,
                                            const std::string& name, bool verified) {
  const auto found = records.find(name);
  if (found == records.end()) throw std::runtime_error("record '" + name + "' is missing");
  const ZipRecord& record = found->second;  // stored, within the file (read_torch_archive checked)
  const char* data = file + record.data_offset;
  if (!verified) check_crc(name, record, crc32_of(data, record.size));
  return {data, static_cast<size_t>(record.size)};
}

// Whether the file behind `fd` is still the one `before` describes (an in-place write changes its times or size).
bool unchanged(int fd, const struct stat& before) {
  struct stat now {};
  return ::fstat(fd, &now) == 0 && now.st_size == before.st_size && now.st_mtim.tv_sec == before.st_mtim.tv_sec &&
         now.st_mtim.tv_nsec == before.st_mtim.tv_nsec && now.st_ctim.tv_sec == before.st_ctim.tv_sec &&
         now.st_ctim.tv_nsec == before.st_ctim.tv_nsec;
}

// Reads every record of the file once, in file order, through a small buffer, and checks its CRC-32: the check costs
// one sequential read (from the disk when the file is cold, after which its pages are cached for what follows),
// without mapping a page or touching fresh memory. Throws std::runtime_error naming the first corrupt record.
void verify_records(int fd, const TorchArchive& archive) {
  constexpr size_t kChunk = size_t{1} << 20;  // stays in the core's cache between the read and the check
  std::unique_ptr<char[]> buffer(new char[kChunk]);
  for (const std::string& name : archive.in_file_order) {  // records share no bytes: at most one read of the file
    const ZipRecord& record = archive.records.at(name);
    uint32_t crc = 0;
    for (uint64_t done = 0; done < record.size;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, record.size - done));
      if (!read_at(fd, buffer.get(), n, record.data_offset + done))
        throw std::runtime_error("record '" + name + "' cannot be read: " + errno_text(errno));
      crc = crc32_update(crc, buffer.get(), n);
      done += n;
    }
    check_crc(name, record, crc);
  }
}

// A DataPtr into memory that `owner` keeps alive (a mapped file): the storage holds a reference to it.
c10::DataPtr borrowed_data(const char* data, const std::shared_ptr<void>& owner) {
  auto* context = new std::shared_ptr<void>(owner);
  return c10::DataPtr(
      const_cast<char*>(data), context, [](void* c) { delete static_cast<std::shared_ptr<void>*>(c); },
      c10::Device(c10::kCPU));
}

// The zip directory of a torch.save file, checked (zip_directory.h), or a CheckpointError naming `name`.
TorchArchive read_archive(const caffe2::serialize::ReadAdapterInterface& source, const std::string& name) {
  const std::string prefix = "cannot read checkpoint '" + name + "': ";
  char magic[4] = {};
  if (source.size() < 4 || source.read(0, magic, 4, "magic") != 4 || std::memcmp(magic, "PK\x03\x04", 4) != 0)
    throw CheckpointError("'" + name + "' is not a PyTorch checkpoint (not a zip file written by torch.save)");
  try {
    return read_torch_archive(source);
  } catch (const std::exception& e) {
    throw CheckpointError(prefix + "the file is truncated or corrupt (" + message_of(e) + ")");
  }
}

// Unpickles data.pkl of the zip in [file, file + size), whose directory is `archive`, building each storage from its
// record: pointing into the file's memory when `owner` keeps that memory alive (a private mapping: writes to the
// tensors stay in the process), else copied. `verified`: every record's CRC-32 was checked already (verify_records).
Value load_zip(const char* file, size_t size, const TorchArchive& archive, const std::shared_ptr<void>& owner,
               bool verified, const std::string& name, const MapLocation& map_location) {
  const std::string prefix = "cannot read checkpoint '" + name + "': ";
  const std::unordered_map<std::string, ZipRecord>& records = archive.records;
  try {
    if (records.count("data.pkl") == 0)
      throw std::runtime_error("it has no data.pkl record (not written by torch.save)");
    const auto [pickle, pickle_size] = record_bytes(file, records, "data.pkl", verified);
    const StorageLoader loader = [&](const std::string& key, const std::string& location, c10::ScalarType dtype,
                                     int64_t numel) {
      const std::string record = "data/" + key;
      uint64_t nbytes;
      if (__builtin_mul_overflow(static_cast<uint64_t>(numel), c10::elementSize(dtype), &nbytes) || nbytes > size) {
        if (records.count(record) == 0) throw std::runtime_error("record '" + record + "' is missing");
        throw std::runtime_error("record '" + record + "' is truncated: the pickle needs " + std::to_string(numel) +
                                 " elements, more than the file holds");
      }
      const c10::Device device = map_location.device_for(location);
      const auto [data, data_size] = record_bytes(file, records, record, verified);
      if (data_size < nbytes) {
        throw std::runtime_error("record '" + record + "' is truncated: it holds " + std::to_string(data_size) +
                                 " bytes, the pickle needs " + std::to_string(nbytes));
      }
      at::Tensor t;
      if (owner) {
        c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(nbytes), borrowed_data(data, owner),
                             nullptr, false);
        t = at::empty({0}, at::TensorOptions().dtype(dtype)).set_(storage, 0, {numel}, {1});
      } else {
        t = at::empty({numel}, at::TensorOptions().dtype(dtype));
        if (nbytes > 0) std::memcpy(t.data_ptr(), data, static_cast<size_t>(nbytes));
      }
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
    return read_pickle(pickle, pickle_size, loader);
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

void save(const Value& object, const std::string& path, const WriteStageHook& hook) { save_as(object, {path}, hook); }

void save_as(const Value& object, const std::vector<std::string>& paths, const WriteStageHook& hook) {
  std::string current = paths.at(0);  // the file a failure is about
  try {
    const Pickle pickle = write_pickle(object);
    size_t bytes = pickle.bytes.size();
    for (const StorageRecord& record : pickle.storages)
      bytes += static_cast<size_t>(record.numel) * c10::elementSize(record.dtype);
    std::vector<std::unique_ptr<AtomicFile>> files;
    for (const std::string& path : paths) {
      current = path;
      files.push_back(std::make_unique<AtomicFile>(path, hook, bytes));
    }
    {
      PyTorchStreamWriter zip([&files](const void* data, size_t n) {
        for (const auto& file : files) file->write(data, n);
        return n;
      });
      zip.writeRecord("data.pkl", pickle.bytes.data(), pickle.bytes.size());
      zip.writeRecord("byteorder", "little", 6);  // what PyTorch 2.x writes; tensor data is little-endian
      for (const StorageRecord& record : pickle.storages) write_storage(zip, record);
      zip.writeEndOfFile();
    }
    for (const auto& file : files) {
      current = file->path();
      file->commit();
    }
  } catch (const std::exception& e) {
    throw CheckpointError("cannot write checkpoint '" + current + "': " + message_of(e));
  }
}

namespace {

// The file at `path`, opened for reading: a regular file (a FIFO is not waited on, a device or folder not read) whose
// zip directory read_torch_archive accepts. Throws CheckpointError naming the path.
struct OpenCheckpoint {
  int fd = -1;
  size_t size = 0;
  TorchArchive archive;
};

OpenCheckpoint open_checkpoint(const std::string& path) {
  const std::string prefix = "cannot read checkpoint '" + path + "': ";
  OpenCheckpoint file;
  file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (file.fd < 0) throw CheckpointError(prefix + errno_text(errno));
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) {
    const int err = errno;
    ::close(file.fd);
    throw CheckpointError(prefix + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(file.fd);
    throw CheckpointError(prefix + (S_ISDIR(st.st_mode)
                                        ? errno_text(EISDIR)
                                        : std::string("not a regular file (a device, pipe or socket)")));
  }
  file.size = static_cast<size_t>(st.st_size);
  // The zip directory first, read with pread: a file that is not a checkpoint (a 2 GiB image, a sparse file, a zip
  // bomb) is refused having cost only its directory.
  try {
    file.archive = read_archive(FileSource(file.fd, file.size), path);
  } catch (...) {
    ::close(file.fd);
    throw;
  }
  return file;
}

}  // namespace

at::Tensor read_checkpoint_bytes(const std::string& path) {
  OpenCheckpoint file = open_checkpoint(path);
  at::Tensor bytes = at::empty({static_cast<int64_t>(file.size)}, at::kByte);
  const bool ok = file.size == 0 || read_at(file.fd, static_cast<char*>(bytes.data_ptr()), file.size, 0);
  const int err = errno;
  ::close(file.fd);
  if (!ok) throw CheckpointError("cannot read checkpoint '" + path + "': read failed: " + errno_text(err));
  return bytes;
}

Value load(const std::string& path, const MapLocation& map_location) {
  const std::string prefix = "cannot read checkpoint '" + path + "': ";
  OpenCheckpoint file = open_checkpoint(path);
  const std::shared_ptr<int> fd(new int(file.fd), [](const int* f) {
    ::close(*f);
    delete f;
  });
  const size_t size = file.size;
  const TorchArchive archive = std::move(file.archive);
  struct stat checked {};
  if (::fstat(*fd, &checked) != 0) throw CheckpointError(prefix + errno_text(errno));
  try {
    verify_records(*fd, archive);
  } catch (const std::exception& e) {
    throw CheckpointError(prefix + message_of(e));
  }
  // Then the file mapped privately: read-only with MAP_POPULATE, so the kernel maps the page cache's pages, which the
  // check just filled (no copy: a writable private mapping would populate by copying every page), then made writable,
  // so that a tensor written later gets a private copy of the pages it writes, and only those. Where a file cannot be
  // mapped, it is read into one buffer that the tensors point into.
  std::shared_ptr<void> owner;
  if (size > 0) {
    void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, *fd, 0);
    if (mapped != MAP_FAILED && ::mprotect(mapped, size, PROT_READ | PROT_WRITE) != 0) {
      ::munmap(mapped, size);
      mapped = MAP_FAILED;
    }
    if (mapped != MAP_FAILED) {
      owner = std::shared_ptr<void>(mapped, [size](void* p) { ::munmap(p, size); });
    } else {
      std::shared_ptr<char> buffer(new char[size], std::default_delete<char[]>());
      if (!read_at(*fd, buffer.get(), size, 0)) throw CheckpointError(prefix + "read failed: " + errno_text(errno));
      owner = buffer;
    }
  }
  Value value = load_zip(static_cast<const char*>(owner.get()), size, archive, owner, true, path, map_location);
  // The records are the ones checked unless the file was written in place since (ddprun's saves never do: they
  // rename a new file over it); an in-place write changes its times.
  if (!unchanged(*fd, checked))
    throw CheckpointError(prefix + "the file was written in place while it was being loaded; load it again");
  return value;
}

Value load_from_memory(const void* data, size_t size, const std::string& name, const MapLocation& map_location) {
  const TorchArchive archive = read_archive(MemorySource(data, size), name);
  return load_zip(static_cast<const char*>(data), size, archive, nullptr, false, name, map_location);
}

}  // namespace ddprun::checkpoint
