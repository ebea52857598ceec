// The restricted unpickler: a loop over opcodes with an explicit stack, every read bounds-checked, every global
// looked up in a fixed table (never imported or called), and the result checked for cycles and excessive nesting
// before it is handed out. Containers built but not returned are emptied one by one, so that no destructor
// recurses deeply, whatever the file holds.
#include "checkpoint/pickle_reader.h"

#include "checkpoint/pickle_common.h"
#include "checkpoint/quoted_text.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace ddprun::checkpoint {
namespace {

// Every pickle opcode (protocols 0-5), for messages.
constexpr struct {
  uint8_t op;
  const char* name;
} kOpcodes[] = {{'(', "MARK"},
                {'.', "STOP"},
                {'0', "POP"},
                {'1', "POP_MARK"},
                {'2', "DUP"},
                {'F', "FLOAT"},
                {'I', "INT"},
                {'J', "BININT"},
                {'K', "BININT1"},
                {'L', "LONG"},
                {'M', "BININT2"},
                {'N', "NONE"},
                {'P', "PERSID"},
                {'Q', "BINPERSID"},
                {'R', "REDUCE"},
                {'S', "STRING"},
                {'T', "BINSTRING"},
                {'U', "SHORT_BINSTRING"},
                {'V', "UNICODE"},
                {'X', "BINUNICODE"},
                {'a', "APPEND"},
                {'b', "BUILD"},
                {'c', "GLOBAL"},
                {'d', "DICT"},
                {'}', "EMPTY_DICT"},
                {'e', "APPENDS"},
                {'g', "GET"},
                {'h', "BINGET"},
                {'i', "INST"},
                {'j', "LONG_BINGET"},
                {'l', "LIST"},
                {']', "EMPTY_LIST"},
                {'o', "OBJ"},
                {'p', "PUT"},
                {'q', "BINPUT"},
                {'r', "LONG_BINPUT"},
                {'s', "SETITEM"},
                {'t', "TUPLE"},
                {')', "EMPTY_TUPLE"},
                {'u', "SETITEMS"},
                {'G', "BINFLOAT"},
                {'B', "BINBYTES"},
                {'C', "SHORT_BINBYTES"},
                {0x80, "PROTO"},
                {0x81, "NEWOBJ"},
                {0x82, "EXT1"},
                {0x83, "EXT2"},
                {0x84, "EXT4"},
                {0x85, "TUPLE1"},
                {0x86, "TUPLE2"},
                {0x87, "TUPLE3"},
                {0x88, "NEWTRUE"},
                {0x89, "NEWFALSE"},
                {0x8a, "LONG1"},
                {0x8b, "LONG4"},
                {0x8c, "SHORT_BINUNICODE"},
                {0x8d, "BINUNICODE8"},
                {0x8e, "BINBYTES8"},
                {0x8f, "EMPTY_SET"},
                {0x90, "ADDITEMS"},
                {0x91, "FROZENSET"},
                {0x92, "NEWOBJ_EX"},
                {0x93, "STACK_GLOBAL"},
                {0x94, "MEMOIZE"},
                {0x95, "FRAME"},
                {0x96, "BYTEARRAY8"},
                {0x97, "NEXT_BUFFER"},
                {0x98, "READONLY_BUFFER"}};

const char* opcode_name(uint8_t op) {
  for (const auto& o : kOpcodes) {
    if (o.op == op) return o.name;
  }
  return nullptr;
}

std::string hex_byte(uint8_t b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[b >> 4] + kDigits[b & 15];
}

struct Global {
  enum class Kind { OrderedDict, RebuildTensorV2, RebuildParameter, RebuildParameterWithState, Storage, Device };
  Kind kind;
  c10::ScalarType dtype = c10::ScalarType::Byte;  // Storage only
  std::string name;                               // "module.name"
};

// What the pickle stack holds: a Value, or one of the things torch.load sees but a Value cannot hold (a global, a
// storage, a tuple holding either). Tuples of those nest one level at most: a nested one is made a Value.
struct Item {
  enum class Kind { Value, Global, Storage, RawTuple };
  Kind kind = Kind::Value;
  Value value;
  std::shared_ptr<const Global> global;
  at::Tensor storage;  // 1-D over the whole storage
  std::shared_ptr<std::vector<Item>> raw;

  Item() = default;
  Item(Value v) : value(std::move(v)) {}  // NOLINT: implicit on purpose
};

const void* container_id(const Value& v) {
  if (v.is_sequence()) return &v.items();
  if (v.is_mapping()) return &v.entries();
  return nullptr;
}

// What the budget charges (estimates of the allocator's bytes, measured against the process's peak memory on
// hostile pickles: see test_checkpoint's PickleMemoryBudget).
constexpr size_t kContainerBytes = 320;                                   // a list, tuple or dict, with its bookkeeping
constexpr size_t kElementBytes = 2 * sizeof(Value);                       // a list or tuple element (vectors grow by 2)
constexpr size_t kEntryBytes = 2 * sizeof(std::pair<Value, Value>) + 64;  // a dict entry and its index
constexpr size_t kMemoEntryBytes = sizeof(Item) + 64;                     // a memo slot

class Reader {
 public:
  Reader(const void* data, size_t size, const StorageLoader& loader)
      : begin_(static_cast<const uint8_t*>(data)),
        p_(begin_),
        end_(begin_ + size),
        loader_(loader),
        budget_(size > (SIZE_MAX - kPickleBudgetBaseBytes) / kPickleBudgetPerByte
                    ? SIZE_MAX
                    : kPickleBudgetBaseBytes + kPickleBudgetPerByte * size) {}

  // Empties every container that is not part of the result, so that freeing them never recurses (a malicious file
  // may build a chain a million levels deep, or a cycle, and then not return it).
  ~Reader() {
    for (Value& c : containers_) {
      if (keep_.count(container_id(c))) continue;
      if (c.is_sequence()) {
        c.items().clear();
      } else {
        c.entries().clear();
      }
    }
  }

  Value run() {
    while (true) {
      if (p_ == end_) fail("truncated pickle: it ends at byte " + std::to_string(pos()) + " without a STOP opcode");
      op_pos_ = pos();
      op_ = *p_++;
      switch (op_) {
        case 0x80: {  // PROTO
          const uint8_t version = read_u8();
          if (version > 5) fail_at("unsupported pickle protocol " + std::to_string(version));
          break;
        }
        case 0x95:  // FRAME: a length hint; the frame's opcodes follow inline
          read_bytes(8);
          break;
        case '(':  // MARK
          marks_.push_back(stack_.size());
          break;
        case '.': {  // STOP
          Value result = to_value(pop());
          std::unordered_map<const void*, int> heights;
          height(result, 0, heights);
          for (const auto& entry : heights) keep_.insert(entry.first);
          return result;
        }
        case 'N':
          push(Value());
          break;
        case 0x88:
          push(Value(true));
          break;
        case 0x89:
          push(Value(false));
          break;
        case 'J':  // BININT
          push(Value(static_cast<int64_t>(static_cast<int32_t>(read_u32()))));
          break;
        case 'K':  // BININT1
          push(Value(static_cast<int64_t>(read_u8())));
          break;
        case 'M':  // BININT2
          push(Value(static_cast<int64_t>(read_u16())));
          break;
        case 0x8a:  // LONG1
          push(Value(read_long1()));
          break;
        case 'G':  // BINFLOAT
          push(Value(read_binfloat()));
          break;
        case 'X':  // BINUNICODE
          push(Value(read_string(read_u32())));
          break;
        case 0x8c:  // SHORT_BINUNICODE
          push(Value(read_string(read_u8())));
          break;
        case 0x8d:  // BINUNICODE8
          push(Value(read_string(read_u64())));
          break;
        case '}':
          push(track(Value::dict()));
          break;
        case ']':
          push(track(Value::list()));
          break;
        case ')':
          push(make_tuple({}));
          break;
        case 't':
          push(make_tuple(pop_mark()));
          break;
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1-3
          const size_t n = op_ - 0x84;
          std::vector<Item> items(n);
          for (size_t i = n; i > 0; --i) items[i - 1] = pop();
          push(make_tuple(std::move(items)));
          break;
        }
        case 's': {  // SETITEM
          Item value = pop();
          Item key = pop();
          set_item(top_mapping(), to_value(std::move(key)), to_value(std::move(value)));
          break;
        }
        case 'u': {  // SETITEMS: the items above the mark go into the dict below it, straight from the stack
          const size_t mark = take_mark();
          if ((stack_.size() - mark) % 2 != 0) fail_at("SETITEMS with an odd number of items");
          Value map = mapping_at(mark);
          for (size_t i = mark; i < stack_.size(); i += 2) {
            set_item(map, to_value(std::move(stack_[i])), to_value(std::move(stack_[i + 1])));
          }
          stack_.resize(mark);
          break;
        }
        case 'a': {  // APPEND
          Item value = pop();
          charge(kElementBytes);
          top_list().append(to_value(std::move(value)));
          break;
        }
        case 'e': {  // APPENDS: the items above the mark go into the list below it, straight from the stack
          const size_t mark = take_mark();
          Value list = list_at(mark);
          charge((stack_.size() - mark) * kElementBytes);
          for (size_t i = mark; i < stack_.size(); ++i) list.append(to_value(std::move(stack_[i])));
          stack_.resize(mark);
          break;
        }
        case 'q':  // BINPUT
          memo_put(read_u8());
          break;
        case 'r':  // LONG_BINPUT
          memo_put(read_u32());
          break;
        case 0x94:  // MEMOIZE
          memo_put(static_cast<uint32_t>(memo_.size()));
          break;
        case 'h':  // BINGET
          push(memo_get(read_u8()));
          break;
        case 'j':  // LONG_BINGET
          push(memo_get(read_u32()));
          break;
        case 'c': {  // GLOBAL
          std::string module = read_line();
          std::string name = read_line();
          push(resolve(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          Item name = pop();
          Item module = pop();
          if (!is_string(module) || !is_string(name)) fail_at("STACK_GLOBAL needs two strings");
          push(resolve(module.value.to_string(), name.value.to_string()));
          break;
        }
        case 'R': {  // REDUCE
          Item args = pop();
          Item func = pop();
          push(call(func, args));
          break;
        }
        case 'b': {  // BUILD: only the attributes of an OrderedDict (a state dict's _metadata), which are dropped
          pop();
          const Item& inst = top();
          if (inst.kind != Item::Kind::Value || inst.value.kind() != Value::Kind::OrderedDict) {
            fail_at("BUILD on a " + describe(inst) + " is not allowed (weights_only)");
          }
          break;
        }
        case 'Q': {  // BINPERSID
          Item pid = pop();
          push(persistent_load(pid));
          break;
        }
        default: {
          const char* name = opcode_name(op_);
          if (name == nullptr) fail("unknown pickle opcode " + hex_byte(op_) + " at byte " + std::to_string(op_pos_));
          fail(std::string("pickle opcode ") + name + " (" + hex_byte(op_) + ") at byte " + std::to_string(op_pos_) +
               " is not allowed (weights_only)");
        }
      }
    }
  }

 private:
  struct DictIndex {
    std::unordered_map<std::string, size_t> strings;
    std::unordered_map<int64_t, size_t> ints;
  };

  [[noreturn]] static void fail(const std::string& message) { throw std::runtime_error(message); }
  [[noreturn]] void fail_at(const std::string& message) const {
    const char* name = opcode_name(op_);
    fail(message + " (" + (name ? name : "?") + " at pickle byte " + std::to_string(op_pos_) + ")");
  }

  size_t pos() const { return static_cast<size_t>(p_ - begin_); }

  const uint8_t* read_bytes(uint64_t n) {
    const auto left = static_cast<uint64_t>(end_ - p_);
    if (left < n) {
      fail("truncated pickle: " + std::string(opcode_name(op_)) + " at byte " + std::to_string(op_pos_) + " needs " +
           std::to_string(n) + " bytes, " + std::to_string(left) + " left");
    }
    const uint8_t* r = p_;
    p_ += n;
    return r;
  }
  uint8_t read_u8() { return *read_bytes(1); }
  uint16_t read_u16() {
    const uint8_t* b = read_bytes(2);
    return static_cast<uint16_t>(b[0] | (b[1] << 8));
  }
  uint32_t read_u32() {
    const uint8_t* b = read_bytes(4);
    return static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 8) | (static_cast<uint32_t>(b[2]) << 16) |
           (static_cast<uint32_t>(b[3]) << 24);
  }
  uint64_t read_u64() {
    const uint8_t* b = read_bytes(8);
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
    return v;
  }
  std::string read_string(uint64_t n) {
    const uint8_t* b = read_bytes(n);
    charge(static_cast<size_t>(n) + sizeof(std::string));
    return std::string(reinterpret_cast<const char*>(b), static_cast<size_t>(n));
  }
  double read_binfloat() {
    const uint8_t* b = read_bytes(8);
    uint64_t bits = 0;
    for (int i = 0; i < 8; ++i) bits = (bits << 8) | b[i];  // big-endian
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
  }
  int64_t read_long1() {
    size_t n = read_u8();
    const uint8_t* b = read_bytes(n);
    if (n == 0) return 0;
    if (n > 8) {
      const uint8_t fill = (b[7] & 0x80) ? 0xff : 0x00;
      for (size_t i = 8; i < n; ++i) {
        if (b[i] != fill) fail_at("an integer does not fit in 64 bits");
      }
      n = 8;
    }
    uint64_t u = 0;
    for (size_t i = 0; i < n; ++i) u |= static_cast<uint64_t>(b[i]) << (8 * i);
    if (n < 8 && (b[n - 1] & 0x80)) u |= ~uint64_t{0} << (8 * n);
    return static_cast<int64_t>(u);
  }
  // A GLOBAL operand: text up to a newline.
  std::string read_line() {
    constexpr size_t kMaxLine = 1024;
    const size_t left = static_cast<size_t>(end_ - p_);
    const auto* nl = static_cast<const uint8_t*>(std::memchr(p_, '\n', std::min(left, kMaxLine)));
    if (nl == nullptr) {
      if (left < kMaxLine) {
        fail("truncated pickle: GLOBAL at byte " + std::to_string(op_pos_) + " has no end of line");
      }
      fail_at("a GLOBAL name is longer than 1024 bytes");
    }
    std::string line(reinterpret_cast<const char*>(p_), static_cast<size_t>(nl - p_));
    p_ = nl + 1;
    return line;
  }

  void push(Item item) {
    // A full stack grows into a buffer twice its size while the old one still exists: check before it does.
    if (stack_.size() == stack_.capacity()) check_budget(2 * std::max<size_t>(stack_.capacity(), 1) * sizeof(Item));
    stack_.push_back(std::move(item));
  }

  // Memory the objects built so far keep (the stack is counted as it stands, in check_budget).
  void charge(size_t bytes) {
    kept_ += bytes;
    check_budget(0);
  }
  // Fails when what is kept, the stack and `transient` more bytes exceed the budget.
  void check_budget(size_t transient) const {
    const size_t in_use = kept_ + stack_.capacity() * sizeof(Item) + memo_.size() * kMemoEntryBytes + transient;
    if (in_use <= budget_) return;
    const size_t size = static_cast<size_t>(end_ - begin_);
    fail_at("unpickling needs more than " + std::to_string(budget_ >> 20) + " MiB, the budget for a pickle of " +
            std::to_string(size) + " bytes (" + std::to_string(kPickleBudgetBaseBytes >> 20) + " MiB plus " +
            std::to_string(kPickleBudgetPerByte) +
            " bytes per byte); a checkpoint holds far fewer objects than this file builds");
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  Item pop() {
    if (stack_.size() <= floor()) fail_at("the pickle stack is empty");
    Item item = std::move(stack_.back());
    stack_.pop_back();
    return item;
  }
  Item& top() {
    if (stack_.size() <= floor()) fail_at("the pickle stack is empty");
    return stack_.back();
  }
  // Pops the last MARK; returns where the items above it start on the stack.
  size_t take_mark() {
    if (marks_.empty()) fail_at("no MARK to pop to");
    const size_t mark = marks_.back();
    marks_.pop_back();
    return mark;
  }
  std::vector<Item> pop_mark() {
    if (marks_.empty()) fail_at("no MARK to pop to");
    const size_t mark = marks_.back();
    // The items move to a vector of their own, and (for a tuple) their values to another.
    check_budget((stack_.size() - mark) * (sizeof(Item) + sizeof(Value)));
    marks_.pop_back();
    std::vector<Item> items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(mark)),
                            std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }
  void memo_put(uint32_t index) {
    memo_[index] = top();
    check_budget(0);  // the memo is counted there, slot by slot
  }
  Item memo_get(uint32_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail_at("memo entry " + std::to_string(index) + " is not defined");
    return it->second;
  }

  static bool is_string(const Item& item) { return item.kind == Item::Kind::Value && item.value.is_string(); }
  static std::string describe(const Item& item) {
    switch (item.kind) {
      case Item::Kind::Global:
        return "global '" + item.global->name + "'";
      case Item::Kind::Storage:
        return "storage";
      case Item::Kind::RawTuple:
        return "tuple";
      case Item::Kind::Value:
        break;
    }
    return item.value.kind_name();
  }

  Value track(Value container) {
    // The container, its shared_ptr's control block, its entry here, and its entries in the indexes and in the
    // height check's maps.
    charge(kContainerBytes);
    containers_.push_back(container);
    return container;
  }

  Value to_value(Item item) {
    switch (item.kind) {
      case Item::Kind::Value:
        return std::move(item.value);
      case Item::Kind::Storage:
        return Value(item.storage);  // a bare storage: a 1-D tensor over it
      case Item::Kind::Global:
        fail_at("pickle global '" + item.global->name + "' cannot be used as a value (weights_only)");
      case Item::Kind::RawTuple: {
        std::vector<Value> values;
        values.reserve(item.raw->size());
        for (const Item& element : *item.raw) values.push_back(to_value(element));  // elements are never RawTuple
        return track(Value::tuple(std::move(values)));
      }
    }
    return Value();
  }

  Item make_tuple(std::vector<Item> items) {
    const bool raw = std::any_of(items.begin(), items.end(), [](const Item& i) {
      return i.kind == Item::Kind::Global || i.kind == Item::Kind::Storage;
    });
    if (!raw) {
      std::vector<Value> values;
      charge(items.size() * kElementBytes);
      values.reserve(items.size());
      for (Item& item : items) values.push_back(to_value(std::move(item)));
      return Item(track(Value::tuple(std::move(values))));
    }
    for (Item& item : items) {
      if (item.kind == Item::Kind::RawTuple) item = Item(to_value(std::move(item)));
    }
    Item tuple;
    tuple.kind = Item::Kind::RawTuple;
    tuple.raw = std::make_shared<std::vector<Item>>(std::move(items));
    return tuple;
  }

  // The elements of a tuple operand (REDUCE arguments, a persistent id).
  std::vector<Item> tuple_elements(const Item& item, const char* what) {
    if (item.kind == Item::Kind::RawTuple) return *item.raw;
    if (item.kind == Item::Kind::Value && item.value.kind() == Value::Kind::Tuple) {
      return std::vector<Item>(item.value.items().begin(), item.value.items().end());
    }
    fail_at(std::string(what) + " must be a tuple, not a " + describe(item));
  }

  // The item just below stack position `end` (the top of the stack for end == stack_.size()), within the current mark.
  const Item& below(size_t end) {
    if (end == 0 || end <= floor()) fail_at("the pickle stack is empty");
    return stack_[end - 1];
  }
  Value mapping_at(size_t end) {
    const Item& t = below(end);
    if (t.kind != Item::Kind::Value || !t.value.is_mapping()) {
      fail_at("setting an item of a " + describe(t) + " is not allowed (weights_only)");
    }
    return t.value;
  }
  Value list_at(size_t end) {
    const Item& t = below(end);
    if (t.kind != Item::Kind::Value || t.value.kind() != Value::Kind::List) {
      fail_at("appending to a " + describe(t) + " is not allowed (weights_only)");
    }
    return t.value;
  }
  Value top_mapping() { return mapping_at(stack_.size()); }
  Value top_list() { return list_at(stack_.size()); }

  // d[key] = value, replacing an equal str or int key as Python's dict would.
  void set_item(Value map, Value key, Value value) {
    charge(kEntryBytes);
    Items& entries = map.entries();
    DictIndex& index = dict_index_[&entries];
    if (key.is_string()) {
      auto [it, inserted] = index.strings.emplace(key.to_string(), entries.size());
      if (!inserted) {
        entries[it->second].second = std::move(value);
        return;
      }
    } else if (key.is_int()) {
      auto [it, inserted] = index.ints.emplace(key.to_int(), entries.size());
      if (!inserted) {
        entries[it->second].second = std::move(value);
        return;
      }
    }
    entries.emplace_back(std::move(key), std::move(value));
  }

  Item resolve(const std::string& module, const std::string& name) {
    auto global = std::make_shared<Global>();
    global->name = module + "." + name;
    c10::ScalarType dtype;
    if (module == "collections" && name == "OrderedDict") {
      global->kind = Global::Kind::OrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      global->kind = Global::Kind::RebuildTensorV2;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      global->kind = Global::Kind::RebuildParameter;
    } else if (module == "torch._utils" && name == "_rebuild_parameter_with_state") {
      global->kind = Global::Kind::RebuildParameterWithState;
    } else if (module == "torch" && detail::storage_type_dtype(name, &dtype)) {
      global->kind = Global::Kind::Storage;
      global->dtype = dtype;
    } else if ((module == "torch" || module == "torch.storage") && name == "UntypedStorage") {
      global->kind = Global::Kind::Storage;
      global->dtype = c10::ScalarType::Byte;
    } else if (module == "torch" && name == "device") {
      global->kind = Global::Kind::Device;
    } else {
      fail("pickle global '" + quoted_text(global->name) + "' is not allowed (weights_only)");
    }
    Item item;
    item.kind = Item::Kind::Global;
    item.global = std::move(global);
    return item;
  }

  int64_t int_arg(const Item& item, const char* what) {
    if (item.kind != Item::Kind::Value || !item.value.is_int()) {
      fail_at(std::string(what) + " must be an int, not a " + describe(item));
    }
    return item.value.to_int();
  }
  std::vector<int64_t> int_tuple_arg(const Item& item, const char* what) {
    if (item.kind != Item::Kind::Value || !item.value.is_sequence()) {
      fail_at(std::string(what) + " must be a tuple of ints, not a " + describe(item));
    }
    std::vector<int64_t> r;
    for (const Value& v : item.value.items()) {
      if (!v.is_int()) fail_at(std::string(what) + " must be a tuple of ints, it holds a " + v.kind_name());
      r.push_back(v.to_int());
    }
    return r;
  }

  Item call(const Item& func, const Item& args_item) {
    if (func.kind != Item::Kind::Global) fail_at("calling a " + describe(func) + " is not allowed (weights_only)");
    std::vector<Item> args = tuple_elements(args_item, "REDUCE arguments");
    const Global& g = *func.global;
    auto expect_args = [&](size_t lo, size_t hi) {
      if (args.size() < lo || args.size() > hi) {
        fail_at(g.name + " takes " + std::to_string(lo) + (hi > lo ? "-" + std::to_string(hi) : "") +
                " arguments, got " + std::to_string(args.size()));
      }
    };
    switch (g.kind) {
      case Global::Kind::OrderedDict: {
        expect_args(0, 1);
        Value map = track(Value::ordered_dict());
        if (args.size() == 1) {  // OrderedDict([(key, value), ...])
          const Value pairs = to_value(args[0]);
          if (!pairs.is_sequence()) fail_at("OrderedDict's argument must be a list of pairs");
          for (const Value& pair : pairs.items()) {
            if (!pair.is_sequence() || pair.items().size() != 2)
              fail_at("OrderedDict's argument must be a list of pairs");
            set_item(map, pair.items()[0], pair.items()[1]);
          }
        }
        return Item(map);
      }
      case Global::Kind::RebuildTensorV2:
        expect_args(6, 7);  // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        return Item(Value(rebuild_tensor(args)));
      case Global::Kind::RebuildParameter:
      case Global::Kind::RebuildParameterWithState:
        // (data, requires_grad, backward_hooks[, state]): the data tensor is what a state dict needs.
        expect_args(g.kind == Global::Kind::RebuildParameter ? 3 : 4, g.kind == Global::Kind::RebuildParameter ? 3 : 4);
        if (args[0].kind != Item::Kind::Value || !args[0].value.is_tensor()) {
          fail_at(g.name + " needs a tensor, not a " + describe(args[0]));
        }
        return args[0];
      case Global::Kind::Device: {
        expect_args(1, 2);  // torch.device('cuda', 0) or torch.device('cuda:0'): yields the string "cuda:0"
        if (!is_string(args[0])) fail_at("torch.device needs a string, not a " + describe(args[0]));
        std::string device = args[0].value.to_string();
        if (args.size() == 2 && !(args[1].kind == Item::Kind::Value && args[1].value.is_none())) {
          device += ":" + std::to_string(int_arg(args[1], "the device index"));
        }
        return Item(Value(device));
      }
      case Global::Kind::Storage:
        break;
    }
    fail_at("pickle global '" + g.name + "' cannot be called (weights_only)");
  }

  at::Tensor rebuild_tensor(const std::vector<Item>& args) {
    if (args[0].kind != Item::Kind::Storage) {
      fail_at("_rebuild_tensor_v2 needs a storage, not a " + describe(args[0]));
    }
    const at::Tensor& storage = args[0].storage;
    const int64_t offset = int_arg(args[1], "storage_offset");
    const std::vector<int64_t> sizes = int_tuple_arg(args[2], "size");
    const std::vector<int64_t> strides = int_tuple_arg(args[3], "stride");
    if (args[4].kind != Item::Kind::Value || args[4].value.kind() != Value::Kind::Bool) {
      fail_at("requires_grad must be a bool, not a " + describe(args[4]));
    }
    if (sizes.size() != strides.size()) fail_at("a tensor's size and stride have different lengths");
    const int64_t capacity = storage.numel();
    bool empty = false;
    int64_t numel = 1;
    for (int64_t s : sizes) {
      if (s < 0) fail_at("a tensor has a negative size");
      if (__builtin_mul_overflow(numel, s, &numel)) fail_at("a tensor's element count overflows");
      empty = empty || s == 0;
    }
    for (int64_t s : strides) {
      if (s < 0) fail_at("a tensor has a negative stride");
    }
    if (offset < 0 || offset > capacity) fail_at("a tensor's storage offset lies outside its storage");
    if (!empty) {
      int64_t last = offset;  // the last element the tensor reaches
      for (size_t i = 0; i < sizes.size(); ++i) {
        int64_t step;
        if (__builtin_mul_overflow(sizes[i] - 1, strides[i], &step) || __builtin_add_overflow(last, step, &last)) {
          fail_at("a tensor's size and stride overflow");
        }
      }
      if (last >= capacity) {
        fail_at("a tensor reaches element " + std::to_string(last) + " of a storage of " + std::to_string(capacity) +
                " elements");
      }
    }
    return at::empty({0}, storage.options()).set_(storage.storage(), offset, sizes, strides);
  }

  Item persistent_load(const Item& pid) {
    std::vector<Item> e = tuple_elements(pid, "a persistent id");
    if (e.empty() || !is_string(e[0]) || e[0].value.to_string() != "storage") {
      fail_at("a persistent id other than ('storage', ...) is not allowed (weights_only)");
    }
    if (e.size() != 5) fail_at("a storage persistent id must be ('storage', type, key, location, numel)");
    if (e[1].kind != Item::Kind::Global || e[1].global->kind != Global::Kind::Storage) {
      fail_at("a storage persistent id names a " + describe(e[1]) + " where a storage type belongs");
    }
    if (!is_string(e[2]) || !is_string(e[3])) fail_at("a storage's key and location must be strings");
    const c10::ScalarType dtype = e[1].global->dtype;
    const std::string& key = e[2].value.to_string();
    const int64_t numel = int_arg(e[4], "a storage's size");
    if (numel < 0) fail_at("a storage has a negative size");

    Item item;
    item.kind = Item::Kind::Storage;
    if (auto it = storages_.find(key); it != storages_.end()) {
      if (it->second.scalar_type() != dtype || it->second.numel() != numel) {
        fail_at("storage '" + quoted_text(key) + "' is used with two different types or sizes");
      }
      item.storage = it->second;
      return item;
    }
    at::Tensor t = loader_(key, e[3].value.to_string(), dtype, numel);
    if (!t.defined() || t.dim() != 1 || t.scalar_type() != dtype || t.numel() != numel) {
      fail_at("storage '" + quoted_text(key) + "' was not loaded as " + std::to_string(numel) + " elements of " +
              c10::toString(dtype));
    }
    storages_.emplace(key, t);
    item.storage = std::move(t);
    return item;
  }

  // The height of v's container tree (1 for a flat list); fails on cycles and on more than kMaxNesting levels.
  int height(const Value& v, int depth, std::unordered_map<const void*, int>& heights) {
    const void* id = container_id(v);
    if (id == nullptr) return 0;
    if (auto it = heights.find(id); it != heights.end()) {
      if (it->second < 0) fail("the pickle holds a list, tuple or dict that contains itself");
      return it->second;
    }
    if (depth >= detail::kMaxNesting) {
      fail("the pickle nests lists, tuples or dicts deeper than " + std::to_string(detail::kMaxNesting) + " levels");
    }
    heights[id] = -1;
    int h = 0;
    if (v.is_sequence()) {
      for (const Value& item : v.items()) h = std::max(h, height(item, depth + 1, heights));
    } else {
      for (const auto& [key, value] : v.entries()) {
        h = std::max(h, height(key, depth + 1, heights));
        h = std::max(h, height(value, depth + 1, heights));
      }
    }
    ++h;
    if (h > detail::kMaxNesting) {
      fail("the pickle nests lists, tuples or dicts deeper than " + std::to_string(detail::kMaxNesting) + " levels");
    }
    heights[id] = h;
    return h;
  }

  const uint8_t* begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  const StorageLoader& loader_;
  const size_t budget_;  // bytes this unpickling may use (kPickleBudget*)
  size_t kept_ = 0;      // bytes charged for the objects built
  size_t op_pos_ = 0;
  uint8_t op_ = 0;
  std::vector<Item> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, Item> memo_;
  std::unordered_map<std::string, at::Tensor> storages_;
  std::unordered_map<const void*, DictIndex> dict_index_;
  std::vector<Value> containers_;         // every list, tuple and dict built
  std::unordered_set<const void*> keep_;  // those in the result
};

}  // namespace

Value read_pickle(const void* data, size_t size, const StorageLoader& load_storage) {
  return Reader(data, size, load_storage).run();
}

}  // namespace ddprun::checkpoint
