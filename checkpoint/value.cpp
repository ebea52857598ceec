// Value: the in-memory form of the Python objects a checkpoint holds. Accessors check the kind and throw
// std::runtime_error("expected <type>, got <type>") on a mismatch; lists and dicts are shared by reference.
#include "checkpoint/value.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace ddprun::checkpoint {
namespace {

[[noreturn]] void type_error(const char* expected, const Value& got) {
  throw std::runtime_error(std::string("expected ") + expected + ", got " + got.kind_name());
}

// Tensors are equal when dtype, sizes and the bytes of every element match (so NaN equals the same NaN).
bool tensors_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.unsafeGetTensorImpl() == b.unsafeGetTensorImpl()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;
  const at::Tensor ca = a.cpu().resolve_conj().resolve_neg().contiguous();
  const at::Tensor cb = b.cpu().resolve_conj().resolve_neg().contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

}  // namespace

Value Value::list(std::vector<Value> items) {
  auto seq = std::make_shared<Sequence>();
  seq->items = std::move(items);
  Value v;
  v.v_ = std::move(seq);
  return v;
}

Value Value::tuple(std::vector<Value> items) {
  auto seq = std::make_shared<Sequence>();
  seq->items = std::move(items);
  seq->is_tuple = true;
  Value v;
  v.v_ = std::move(seq);
  return v;
}

Value Value::dict(Items items) {
  auto map = std::make_shared<Mapping>();
  map->items = std::move(items);
  Value v;
  v.v_ = std::move(map);
  return v;
}

Value Value::ordered_dict(Items items) {
  auto map = std::make_shared<Mapping>();
  map->items = std::move(items);
  map->ordered = true;
  Value v;
  v.v_ = std::move(map);
  return v;
}

Value::Kind Value::kind() const {
  switch (v_.index()) {
    case 1:
      return Kind::Bool;
    case 2:
      return Kind::Int;
    case 3:
      return Kind::Float;
    case 4:
      return Kind::String;
    case 5:
      return Kind::Tensor;
    case 6: {
      const auto& seq = std::get<6>(v_);
      if (!seq) return Kind::None;  // a moved-from Value
      return seq->is_tuple ? Kind::Tuple : Kind::List;
    }
    case 7: {
      const auto& map = std::get<7>(v_);
      if (!map) return Kind::None;
      return map->ordered ? Kind::OrderedDict : Kind::Dict;
    }
    default:
      return Kind::None;
  }
}

const char* Value::kind_name() const {
  switch (kind()) {
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::Tensor:
      return "Tensor";
    case Kind::List:
      return "list";
    case Kind::Tuple:
      return "tuple";
    case Kind::Dict:
      return "dict";
    case Kind::OrderedDict:
      return "OrderedDict";
  }
  return "?";
}

bool Value::to_bool() const {
  if (kind() != Kind::Bool) type_error("bool", *this);
  return std::get<bool>(v_);
}

int64_t Value::to_int() const {
  if (kind() != Kind::Int) type_error("int", *this);
  return std::get<int64_t>(v_);
}

double Value::to_double() const {
  if (kind() == Kind::Float) return std::get<double>(v_);
  if (kind() == Kind::Int) return static_cast<double>(std::get<int64_t>(v_));
  type_error("float", *this);
}

int64_t Value::to_int_in(int64_t lowest, int64_t highest, const std::string& what) const {
  if (kind() != Kind::Int) throw std::runtime_error(what + " is a " + kind_name() + ", not an int");
  const int64_t v = std::get<int64_t>(v_);
  if (v < lowest || v > highest)
    throw std::runtime_error(what + " is " + std::to_string(v) + "; it can be from " + std::to_string(lowest) + " to " +
                             std::to_string(highest));
  return v;
}

double Value::to_double_in(double lowest, double highest, const std::string& what) const {
  if (kind() != Kind::Float && kind() != Kind::Int)
    throw std::runtime_error(what + " is a " + kind_name() + ", not a number");
  const double v = to_double();
  if (!std::isfinite(v) || v < lowest || v > highest) {
    char text[96];
    std::snprintf(text, sizeof text, " is %.17g; it can be from %.17g to %.17g", v, lowest, highest);
    throw std::runtime_error(what + text);
  }
  return v;
}

const std::string& Value::to_string() const {
  if (kind() != Kind::String) type_error("str", *this);
  return *std::get<std::shared_ptr<const std::string>>(v_);
}

const at::Tensor& Value::to_tensor() const {
  if (kind() != Kind::Tensor) type_error("Tensor", *this);
  return std::get<at::Tensor>(v_);
}

std::vector<Value>& Value::items() {
  if (!is_sequence()) type_error("list or tuple", *this);
  return std::get<6>(v_)->items;
}

const std::vector<Value>& Value::items() const {
  if (!is_sequence()) type_error("list or tuple", *this);
  return std::get<6>(v_)->items;
}

Items& Value::entries() {
  if (!is_mapping()) type_error("dict or OrderedDict", *this);
  return std::get<7>(v_)->items;
}

const Items& Value::entries() const {
  if (!is_mapping()) type_error("dict or OrderedDict", *this);
  return std::get<7>(v_)->items;
}

const Value* Value::find(const std::string& key) const {
  for (const auto& [k, v] : entries()) {
    if (k.is_string() && k.to_string() == key) return &v;
  }
  return nullptr;
}

const Value* Value::find(int64_t key) const {
  for (const auto& [k, v] : entries()) {
    if (k.is_int() && k.to_int() == key) return &v;
  }
  return nullptr;
}

const Value& Value::at(const std::string& key) const {
  if (const Value* v = find(key)) return *v;
  throw std::runtime_error("missing key '" + key + "'");
}

const Value& Value::at(int64_t key) const {
  if (const Value* v = find(key)) return *v;
  throw std::runtime_error("missing key " + std::to_string(key));
}

Value& Value::set(Value key, Value value) {
  Items& items = entries();
  for (auto& [k, v] : items) {
    if (k == key) {
      v = std::move(value);
      return *this;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
  return *this;
}

Value& Value::append(Value value) {
  if (kind() != Kind::List) type_error("list", *this);
  std::get<6>(v_)->items.push_back(std::move(value));
  return *this;
}

bool Value::operator==(const Value& other) const {
  const Kind k = kind();
  if (k != other.kind()) return false;
  switch (k) {
    case Kind::None:
      return true;
    case Kind::Bool:
      return std::get<bool>(v_) == std::get<bool>(other.v_);
    case Kind::Int:
      return std::get<int64_t>(v_) == std::get<int64_t>(other.v_);
    case Kind::Float:
      return std::get<double>(v_) == std::get<double>(other.v_);
    case Kind::String:
      return to_string() == other.to_string();
    case Kind::Tensor:
      return tensors_equal(std::get<at::Tensor>(v_), std::get<at::Tensor>(other.v_));
    case Kind::List:
    case Kind::Tuple: {
      const auto& a = std::get<6>(v_);
      const auto& b = std::get<6>(other.v_);
      if (a == b) return true;
      if (a->items.size() != b->items.size()) return false;
      for (size_t i = 0; i < a->items.size(); ++i) {
        if (a->items[i] != b->items[i]) return false;
      }
      return true;
    }
    case Kind::Dict:
    case Kind::OrderedDict: {
      const auto& a = std::get<7>(v_);
      const auto& b = std::get<7>(other.v_);
      if (a == b) return true;
      if (a->items.size() != b->items.size()) return false;
      for (size_t i = 0; i < a->items.size(); ++i) {
        if (a->items[i].first != b->items[i].first || a->items[i].second != b->items[i].second) return false;
      }
      return true;
    }
  }
  return false;
}

namespace {

Value deep_copy_of(const Value& v, const std::function<at::Tensor(const at::Tensor&)>& copy_tensor,
                   std::unordered_map<const void*, Value>& copies) {
  switch (v.kind()) {
    case Value::Kind::Tensor:
      return Value(copy_tensor(v.to_tensor()));
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      const void* id = &v.items();
      if (auto it = copies.find(id); it != copies.end()) return it->second;
      Value copy = v.kind() == Value::Kind::List ? Value::list() : Value::tuple();
      copies.emplace(id, copy);
      for (const Value& item : v.items()) copy.items().push_back(deep_copy_of(item, copy_tensor, copies));
      return copy;
    }
    case Value::Kind::Dict:
    case Value::Kind::OrderedDict: {
      const void* id = &v.entries();
      if (auto it = copies.find(id); it != copies.end()) return it->second;
      Value copy = v.kind() == Value::Kind::Dict ? Value::dict() : Value::ordered_dict();
      copies.emplace(id, copy);
      for (const auto& [key, value] : v.entries())
        copy.entries().emplace_back(deep_copy_of(key, copy_tensor, copies), deep_copy_of(value, copy_tensor, copies));
      return copy;
    }
    default:
      return v;  // scalars and strings are values
  }
}

}  // namespace

Value Value::deep_copy(const std::function<at::Tensor(const at::Tensor&)>& copy_tensor) const {
  std::unordered_map<const void*, Value> copies;
  return deep_copy_of(*this, copy_tensor, copies);
}

}  // namespace ddprun::checkpoint
