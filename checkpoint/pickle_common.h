// What the pickle reader and writer share: the legacy storage classes (torch.FloatStorage, ...) that torch.save
// names in its pickles, one per dtype a checkpoint may hold, and the nesting limit. Internal to the checkpoint module.
#pragma once

#include <c10/core/ScalarType.h>

#include <string_view>

namespace ddprun::checkpoint::detail {

// Lists, tuples and dicts may nest at most this deep (deeper structures, and cycles, are refused on both sides so
// that nothing recurses without bound).
inline constexpr int kMaxNesting = 1000;

struct StorageType {
  c10::ScalarType dtype;
  const char* name;  // the class name in module `torch`
};

inline constexpr StorageType kStorageTypes[] = {
    {c10::ScalarType::Float, "FloatStorage"}, {c10::ScalarType::Double, "DoubleStorage"},
    {c10::ScalarType::Half, "HalfStorage"},   {c10::ScalarType::BFloat16, "BFloat16Storage"},
    {c10::ScalarType::Char, "CharStorage"},   {c10::ScalarType::Short, "ShortStorage"},
    {c10::ScalarType::Int, "IntStorage"},     {c10::ScalarType::Long, "LongStorage"},
    {c10::ScalarType::Byte, "ByteStorage"},   {c10::ScalarType::Bool, "BoolStorage"},
};

// The storage class name for `dtype`, or nullptr when checkpoints cannot hold that dtype.
inline const char* storage_type_name(c10::ScalarType dtype) {
  for (const auto& t : kStorageTypes) {
    if (t.dtype == dtype) return t.name;
  }
  return nullptr;
}

// The dtype of the storage class `name` (without the "torch." prefix); false when it is not one of ours.
inline bool storage_type_dtype(std::string_view name, c10::ScalarType* dtype) {
  for (const auto& t : kStorageTypes) {
    if (name == t.name) {
      *dtype = t.dtype;
      return true;
    }
  }
  return false;
}

}  // namespace ddprun::checkpoint::detail
