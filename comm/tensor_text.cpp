// Names of dtypes, tensor lists, sizes and durations for the collective layer's messages.
#include "comm/tensor_text.h"

#include <cstdio>

namespace ddprun::comm {

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kShort:
      return "int16";
    case at::kChar:
      return "int8";
    case at::kByte:
      return "uint8";
    case at::kBool:
      return "bool";
    default:
      return c10::toString(type);
  }
}

namespace {
std::string describe_tensor(const at::Tensor& tensor) {
  if (!tensor.defined()) return "undefined";
  std::string text = dtype_name(tensor.scalar_type()) + "[";
  for (int64_t d = 0; d < tensor.dim(); ++d) text += (d ? ", " : "") + std::to_string(tensor.size(d));
  return text + "]";
}
}  // namespace

std::string describe_tensors(const std::vector<at::Tensor>& tensors, size_t max_listed) {
  if (tensors.size() == 1) return describe_tensor(tensors[0]);
  int64_t bytes = 0;
  for (const at::Tensor& t : tensors) bytes += t.defined() ? int64_t(t.nbytes()) : 0;
  std::string text = std::to_string(tensors.size()) + " tensors";
  for (size_t i = 0; i < tensors.size() && i < max_listed; ++i) text += (i ? ", " : ": ") + describe_tensor(tensors[i]);
  if (tensors.size() > max_listed) text += ", ...";
  return text + " (" + describe_bytes(bytes) + ")";
}

std::string describe_bytes(int64_t bytes) {
  char text[32];
  if (bytes < 1024) {
    std::snprintf(text, sizeof text, "%lld B", static_cast<long long>(bytes));
  } else if (bytes < (int64_t{1} << 20)) {
    std::snprintf(text, sizeof text, "%.1f KiB", bytes / 1024.0);
  } else if (bytes < (int64_t{1} << 30)) {
    std::snprintf(text, sizeof text, "%.1f MiB", bytes / 1048576.0);
  } else {
    std::snprintf(text, sizeof text, "%.2f GiB", bytes / 1073741824.0);
  }
  return text;
}

std::string describe_duration(std::chrono::milliseconds duration) {
  char text[32];
  std::snprintf(text, sizeof text, "%g s", duration.count() / 1000.0);
  return text;
}

std::string signature_mismatch(const std::string& collective, const std::vector<std::string>& signatures) {
  bool same = true;
  for (const std::string& s : signatures) same = same && s == signatures[0];
  if (same) return "";
  std::string message = collective + ": the ranks pass different collectives or tensors: ";
  for (size_t r = 0; r < signatures.size(); ++r)
    message += (r ? "; rank " : "rank ") + std::to_string(r) + ": " + signatures[r];
  return message;
}

}  // namespace ddprun::comm
