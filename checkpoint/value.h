// The Python objects a checkpoint holds: None, bool, int, float, str, tensor, list, tuple, dict and OrderedDict.
// This is the in-memory form of what torch.save pickles; lists and dicts are shared (as Python objects are), so
// copying a Value copies a reference, not the contents.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace ddprun::checkpoint {

class Value;
using Items = std::vector<std::pair<Value, Value>>;  // dict entries in insertion order

struct Sequence {
  std::vector<Value> items;
  bool is_tuple = false;
};
struct Mapping {
  Items items;
  bool ordered = false;  // collections.OrderedDict (what state_dict() returns) rather than dict
};

class Value {
 public:
  enum class Kind { None, Bool, Int, Float, String, Tensor, List, Tuple, Dict, OrderedDict };

  Value() = default;  // None
  Value(std::nullptr_t) {}
  Value(bool b) : v_(b) {}
  Value(int i) : v_(static_cast<int64_t>(i)) {}
  Value(int64_t i) : v_(i) {}
  Value(double d) : v_(d) {}
  Value(const char* s) : v_(std::make_shared<const std::string>(s)) {}
  Value(std::string s) : v_(std::make_shared<const std::string>(std::move(s))) {}
  Value(at::Tensor t) : v_(std::move(t)) {}

  static Value list(std::vector<Value> items = {});
  static Value tuple(std::vector<Value> items = {});
  static Value dict(Items items = {});
  static Value ordered_dict(Items items = {});

  Kind kind() const;
  const char* kind_name() const;  // the Python type name: "NoneType", "int", "OrderedDict", ...
  bool is_none() const { return kind() == Kind::None; }
  bool is_int() const { return kind() == Kind::Int; }
  bool is_float() const { return kind() == Kind::Float; }
  bool is_string() const { return kind() == Kind::String; }
  bool is_tensor() const { return kind() == Kind::Tensor; }
  bool is_sequence() const { return kind() == Kind::List || kind() == Kind::Tuple; }
  bool is_mapping() const { return kind() == Kind::Dict || kind() == Kind::OrderedDict; }

  // Accessors throw std::runtime_error naming the expected and the actual type when the kind differs.
  // A number read from a file is read with the range it can have (what it means): an int in [lowest, highest], a
  // finite float in [lowest, highest] (an int is accepted, as Python would). std::runtime_error otherwise:
  // "<what> is 4294967296; it can be from 0 to 2147483647".
  int64_t to_int_in(int64_t lowest, int64_t highest, const std::string& what) const;
  double to_double_in(double lowest, double highest, const std::string& what) const;
  bool to_bool() const;
  int64_t to_int() const;
  double to_double() const;  // an int is accepted too, as Python would
  const std::string& to_string() const;
  const at::Tensor& to_tensor() const;
  std::vector<Value>& items();  // list or tuple elements
  const std::vector<Value>& items() const;
  Items& entries();  // dict or OrderedDict entries
  const Items& entries() const;

  // Dict look-up by string or int key (linear; checkpoints have few keys per level).
  const Value* find(const std::string& key) const;
  const Value* find(int64_t key) const;
  // Like find, but throws std::runtime_error("missing key '<key>'") when absent.
  const Value& at(const std::string& key) const;
  const Value& at(int64_t key) const;
  // Appends (or replaces) a dict entry; returns *this for chaining.
  Value& set(Value key, Value value);
  // Appends to a list.
  Value& append(Value value);

  // A copy of the whole tree: every list and dict is new (one that appears twice is copied once and stays shared),
  // every tensor goes through `copy_tensor`.
  Value deep_copy(const std::function<at::Tensor(const at::Tensor&)>& copy_tensor) const;

  // Deep. Kinds must match (1 != 1.0, list != tuple, dict != OrderedDict); dict entries compare in order;
  // tensors compare by dtype, sizes and the bytes of their values (strides and devices may differ).
  bool operator==(const Value& other) const;
  bool operator!=(const Value& other) const { return !(*this == other); }

 private:
  // Strings are shared too: a pickle's memo may copy one string a million times, which must not copy its bytes.
  using Storage = std::variant<std::monostate, bool, int64_t, double, std::shared_ptr<const std::string>, at::Tensor,
                               std::shared_ptr<Sequence>, std::shared_ptr<Mapping>>;
  Storage v_;
};

}  // namespace ddprun::checkpoint
