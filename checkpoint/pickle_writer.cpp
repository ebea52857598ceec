// The pickle protocol-2 writer: turns a Value into the bytes of data.pkl exactly as torch.save lays them out, and
// collects the storages the tensors live in so that the caller can write them as zip records.
#include "checkpoint/pickle_writer.h"

#include "checkpoint/pickle_common.h"

#include <c10/core/Storage.h>

#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

namespace ddprun::checkpoint {
namespace {

// Opcodes (names as in Python's pickle module). Only ones torch.load(weights_only=True) accepts.
constexpr char PROTO = '\x80';
constexpr char STOP = '.';
constexpr char MARK = '(';
constexpr char NONE = 'N';
constexpr char NEWTRUE = '\x88';
constexpr char NEWFALSE = '\x89';
constexpr char BININT = 'J';
constexpr char BININT1 = 'K';
constexpr char BININT2 = 'M';
constexpr char LONG1 = '\x8a';
constexpr char BINFLOAT = 'G';
constexpr char BINUNICODE = 'X';
constexpr char EMPTY_LIST = ']';
constexpr char EMPTY_DICT = '}';
constexpr char EMPTY_TUPLE = ')';
constexpr char TUPLE = 't';
constexpr char TUPLE1 = '\x85';
constexpr char TUPLE2 = '\x86';
constexpr char TUPLE3 = '\x87';
constexpr char APPENDS = 'e';
constexpr char SETITEMS = 'u';
constexpr char GLOBAL = 'c';
constexpr char REDUCE = 'R';
constexpr char BINPERSID = 'Q';
constexpr char BINPUT = 'q';
constexpr char LONG_BINPUT = 'r';
constexpr char BINGET = 'h';
constexpr char LONG_BINGET = 'j';

constexpr size_t kBatch = 1000;  // items per APPENDS / SETITEMS, as Python's pickler does

// True when s is UTF-8 as Python decodes it with "surrogatepass" (what torch.load uses).
bool is_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    int n = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) {
      n = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (end - p <= n) return false;
    for (int i = 1; i <= n; ++i) {
      if ((p[i] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff) return false;
    p += n + 1;
  }
  return true;
}

class Writer {
 public:
  Pickle run(const Value& root) {
    op(PROTO);
    op(2);
    write(root, 0);
    op(STOP);
    return Pickle{std::move(out_), std::move(storages_)};
  }

 private:
  void op(char c) { out_.push_back(c); }
  void u16(uint16_t v) {
    op(static_cast<char>(v & 0xff));
    op(static_cast<char>(v >> 8));
  }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) op(static_cast<char>((v >> (8 * i)) & 0xff));
  }

  // Memo: every memoized object gets the next index; BINPUT/BINGET below 256, LONG_ forms above.
  void memo_put(uint32_t* index) {
    *index = next_memo_++;
    if (*index < 256) {
      op(BINPUT);
      op(static_cast<char>(*index));
    } else {
      op(LONG_BINPUT);
      u32(*index);
    }
  }
  void memo_get(uint32_t index) {
    if (index < 256) {
      op(BINGET);
      op(static_cast<char>(index));
    } else {
      op(LONG_BINGET);
      u32(index);
    }
  }
  bool memo_full() const { return next_memo_ == UINT32_MAX; }
  void memo_object(const void* id) {
    if (memo_full()) return;  // sharing is lost past 4 G objects, the content is not
    uint32_t index;
    memo_put(&index);
    objects_[id] = index;
  }

  void write_int(int64_t v) {
    if (v >= 0 && v < 256) {
      op(BININT1);
      op(static_cast<char>(v));
    } else if (v >= 0 && v < 65536) {
      op(BININT2);
      u16(static_cast<uint16_t>(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op(BININT);
      u32(static_cast<uint32_t>(static_cast<int32_t>(v)));
    } else {
      // Little-endian two's complement, as short as keeps the sign (Python's encode_long).
      unsigned char bytes[8];
      const auto u = static_cast<uint64_t>(v);
      for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>((u >> (8 * i)) & 0xff);
      int n = 8;
      while (n > 1 &&
             ((bytes[n - 1] == 0x00 && !(bytes[n - 2] & 0x80)) || (bytes[n - 1] == 0xff && (bytes[n - 2] & 0x80)))) {
        --n;
      }
      op(LONG1);
      op(static_cast<char>(n));
      out_.append(reinterpret_cast<const char*>(bytes), n);
    }
  }

  void write_float(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, sizeof bits);
    op(BINFLOAT);
    for (int i = 7; i >= 0; --i) op(static_cast<char>((bits >> (8 * i)) & 0xff));  // big-endian
  }

  void write_string(const std::string& s) {
    if (auto it = strings_.find(s); it != strings_.end()) {
      memo_get(it->second);
      return;
    }
    if (s.size() > UINT32_MAX)
      throw std::runtime_error("a string of " + std::to_string(s.size()) + " bytes is too long");
    if (!is_utf8(s)) throw std::runtime_error("string '" + printable(s) + "' is not valid UTF-8");
    op(BINUNICODE);
    u32(static_cast<uint32_t>(s.size()));
    out_ += s;
    if (!memo_full()) memo_put(&strings_[s]);
  }

  static std::string printable(const std::string& s) {
    std::string r;
    for (char c : s.substr(0, 60)) r += (c >= 0x20 && c < 0x7f) ? c : '?';
    return r;
  }

  void write_global(const char* module, const char* name) {
    const std::string key = std::string(module) + "\n" + name + "\n";
    if (auto it = globals_.find(key); it != globals_.end()) {
      memo_get(it->second);
      return;
    }
    op(GLOBAL);
    out_ += key;
    if (!memo_full()) memo_put(&globals_[key]);
  }

  // A tuple of ints, as torch.save writes sizes and strides.
  void write_int_tuple(c10::IntArrayRef values) {
    if (values.empty()) {
      op(EMPTY_TUPLE);
      return;
    }
    if (values.size() > 3) op(MARK);
    for (int64_t v : values) write_int(v);
    static constexpr char kOps[] = {0, TUPLE1, TUPLE2, TUPLE3};
    op(values.size() > 3 ? TUPLE : kOps[values.size()]);
  }

  void write_tensor(const at::Tensor& original) {
    if (!original.defined()) throw std::runtime_error("cannot save an undefined tensor");
    const void* id = original.unsafeGetTensorImpl();
    if (auto it = objects_.find(id); it != objects_.end()) {
      memo_get(it->second);
      return;
    }
    if (original.layout() != c10::kStrided) throw std::runtime_error("cannot save a sparse tensor");
    if (original.is_quantized()) throw std::runtime_error("cannot save a quantized tensor");
    const char* storage_type = detail::storage_type_name(original.scalar_type());
    if (storage_type == nullptr) {
      throw std::runtime_error(std::string("cannot save a tensor of dtype ") + c10::toString(original.scalar_type()) +
                               " (checkpoints hold float32/64, float16, bfloat16, int8/16/32/64, uint8 and bool)");
    }
    // A lazily negated or conjugated view is materialized (it then shares no storage with its base).
    const at::Tensor t = (original.is_neg() || original.is_conj()) ? original.resolve_conj().resolve_neg() : original;
    if (!t.has_storage() || t.device().is_meta()) {
      throw std::runtime_error("cannot save a tensor without storage (device " + t.device().str() + ")");
    }
    const c10::Storage& storage = t.storage();
    const size_t element_size = c10::elementSize(t.scalar_type());
    const void* data = storage.data_ptr().get();
    const auto storage_id =
        std::make_tuple(static_cast<int>(t.device().type()), static_cast<int>(t.device().index()),
                        data != nullptr ? data : static_cast<const void*>(storage.unsafeGetStorageImpl()));
    const StorageRecord* record;
    if (auto it = storage_index_.find(storage_id); it != storage_index_.end()) {
      record = &storages_[it->second];
      if (record->dtype != t.scalar_type()) {
        throw std::runtime_error(std::string("tensors of dtypes ") + c10::toString(record->dtype) + " and " +
                                 c10::toString(t.scalar_type()) +
                                 " view the same storage; torch.save cannot write that (clone one of them)");
      }
      if (record->numel != static_cast<int64_t>(storage.nbytes() / element_size)) {
        throw std::runtime_error("two storages of different sizes share one data pointer; clone one of the tensors");
      }
    } else {
      storage_index_[storage_id] = storages_.size();
      storages_.push_back(StorageRecord{std::to_string(storages_.size()), t, t.scalar_type(),
                                        static_cast<int64_t>(storage.nbytes() / element_size)});
      record = &storages_.back();
    }

    // _rebuild_tensor_v2(persistent storage, storage_offset, size, stride, requires_grad, OrderedDict())
    write_global("torch._utils", "_rebuild_tensor_v2");
    op(MARK);
    op(MARK);
    write_string("storage");
    write_global("torch", storage_type);
    write_string(record->key);
    write_string("cpu");
    write_int(record->numel);
    op(TUPLE);
    op(BINPERSID);
    write_int(t.storage_offset());
    write_int_tuple(t.sizes());
    write_int_tuple(t.strides());
    op(NEWFALSE);
    write_global("collections", "OrderedDict");
    op(EMPTY_TUPLE);
    op(REDUCE);
    op(TUPLE);
    op(REDUCE);
    memo_object(id);
  }

  // A list, tuple or dict already written is fetched from the memo; one still being written is a cycle.
  bool write_shared(const void* id) {
    if (in_progress_.count(id)) throw std::runtime_error("cannot save a list, tuple or dict that contains itself");
    if (auto it = objects_.find(id); it != objects_.end()) {
      memo_get(it->second);
      return true;
    }
    return false;
  }

  void write(const Value& v, int depth) {
    switch (v.kind()) {
      case Value::Kind::None:
        op(NONE);
        return;
      case Value::Kind::Bool:
        op(v.to_bool() ? NEWTRUE : NEWFALSE);
        return;
      case Value::Kind::Int:
        write_int(v.to_int());
        return;
      case Value::Kind::Float:
        write_float(v.to_double());
        return;
      case Value::Kind::String:
        write_string(v.to_string());
        return;
      case Value::Kind::Tensor:
        write_tensor(v.to_tensor());
        return;
      default:
        break;
    }
    if (depth >= detail::kMaxNesting) {
      throw std::runtime_error("cannot save lists, tuples or dicts nested deeper than " +
                               std::to_string(detail::kMaxNesting) + " levels");
    }
    if (v.kind() == Value::Kind::Tuple) {
      const auto& items = v.items();
      const void* id = &items;
      if (write_shared(id)) return;
      if (items.empty()) {
        op(EMPTY_TUPLE);
        return;
      }
      in_progress_.insert(id);
      if (items.size() > 3) op(MARK);
      for (const Value& item : items) write(item, depth + 1);
      static constexpr char kOps[] = {0, TUPLE1, TUPLE2, TUPLE3};
      op(items.size() > 3 ? TUPLE : kOps[items.size()]);
      in_progress_.erase(id);
      memo_object(id);
      return;
    }
    if (v.kind() == Value::Kind::List) {
      const auto& items = v.items();
      const void* id = &items;
      if (write_shared(id)) return;
      op(EMPTY_LIST);
      memo_object(id);
      in_progress_.insert(id);
      for (size_t begin = 0; begin < items.size(); begin += kBatch) {
        op(MARK);
        for (size_t i = begin; i < items.size() && i < begin + kBatch; ++i) write(items[i], depth + 1);
        op(APPENDS);
      }
      in_progress_.erase(id);
      return;
    }
    // Dict or OrderedDict.
    const Items& entries = v.entries();
    const void* id = &entries;
    if (write_shared(id)) return;
    if (v.kind() == Value::Kind::OrderedDict) {
      write_global("collections", "OrderedDict");
      op(EMPTY_TUPLE);
      op(REDUCE);
    } else {
      op(EMPTY_DICT);
    }
    memo_object(id);
    in_progress_.insert(id);
    for (size_t begin = 0; begin < entries.size(); begin += kBatch) {
      op(MARK);
      for (size_t i = begin; i < entries.size() && i < begin + kBatch; ++i) {
        write(entries[i].first, depth + 1);
        write(entries[i].second, depth + 1);
      }
      op(SETITEMS);
    }
    in_progress_.erase(id);
  }

  std::string out_;
  std::vector<StorageRecord> storages_;
  // (device type, device index, data pointer or, for an empty storage, the StorageImpl) -> index in storages_
  std::map<std::tuple<int, int, const void*>, size_t> storage_index_;
  std::unordered_map<const void*, uint32_t> objects_;  // lists, tuples, dicts, TensorImpls -> memo index
  std::unordered_map<std::string, uint32_t> strings_;
  std::unordered_map<std::string, uint32_t> globals_;
  std::unordered_set<const void*> in_progress_;
  uint32_t next_memo_ = 0;
};

}  // namespace

Pickle write_pickle(const Value& root) { return Writer().run(root); }

}  // namespace ddprun::checkpoint
