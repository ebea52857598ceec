// AsyncSaver: snapshot into host memory on the caller's thread, write on a background thread, errors handed back on
// the next wait().
#include "checkpoint/async_saver.h"

#include "checkpoint/torch_file.h"

#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>

#include <unordered_map>
#include <utility>

namespace ddprun::checkpoint {

Value snapshot_to_host(const Value& object, std::vector<at::Tensor>& staging) {
  std::unordered_map<const void*, at::Tensor> storages;  // StorageImpl -> its bytes in host memory
  size_t next = 0;                                       // the staging buffer for the next storage met
  Value snapshot = object.deep_copy([&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined() || !t.has_storage()) return t;  // save() refuses these with a clear message
    const c10::Storage& storage = t.storage();
    auto it = storages.find(storage.unsafeGetStorageImpl());
    if (it == storages.end()) {
      const int64_t nbytes = static_cast<int64_t>(storage.nbytes());
      const at::Tensor bytes = at::empty({0}, t.options().dtype(at::kByte)).set_(storage, 0, {nbytes}, {1});
      if (next == staging.size()) staging.emplace_back();
      at::Tensor& copy = staging[next++];
      if (!copy.defined() || copy.numel() != nbytes || copy.is_pinned() != t.is_cuda())
        copy = at::empty({nbytes}, at::TensorOptions(at::kByte).pinned_memory(t.is_cuda()));
      copy.copy_(bytes);
      it = storages.emplace(storage.unsafeGetStorageImpl(), copy).first;  // staging keeps it too
    }
    return at::empty({0}, at::TensorOptions(t.scalar_type()))
        .set_(it->second.storage(), t.storage_offset(), t.sizes(), t.strides());
  });
  staging.resize(next);
  return snapshot;
}

AsyncSaver::~AsyncSaver() {
  if (thread_.joinable()) thread_.join();
}

void AsyncSaver::save(const Value& object, std::vector<std::string> paths, std::function<void()> on_saved,
                      WriteStageHook hook) {
  wait();
  Value snapshot = snapshot_to_host(object, staging_);
  thread_ = std::thread([this, snapshot = std::move(snapshot), paths = std::move(paths), on_saved = std::move(on_saved),
                         hook = std::move(hook)] {
    try {
      save_as(snapshot, paths, hook);
      if (on_saved) on_saved();
    } catch (...) {
      error_ = std::current_exception();
    }
  });
}

void AsyncSaver::wait() {
  if (thread_.joinable()) thread_.join();
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
}

}  // namespace ddprun::checkpoint
