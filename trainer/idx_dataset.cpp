// Reads IDX files through zlib (which reads plain files too) and turns index lists into normalized batches.
#include "trainer/idx_dataset.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/index_select.h>
#include <zlib.h>

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <memory>
#include <vector>

namespace ddprun::trainer {
namespace {

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// What an IDX file may hold (Fashion-MNIST's training images: 47 MB), and the pieces it is read in.
constexpr uint64_t kMaxIdxBytes = uint64_t{4} << 30;
constexpr uint64_t kReadPieceBytes = uint64_t{16} << 20;

uint32_t big_endian(const unsigned char* b) {
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

}  // namespace

at::Tensor read_idx_file(const std::string& requested, int expected_dims) {
  std::string path = requested;
  if (!file_exists(path)) {
    if (file_exists(path + ".gz")) {
      path += ".gz";
    } else {
      throw DataError("'" + requested + "[.gz]' not found");
    }
  }
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  if (!file) throw DataError("'" + path + "' cannot be opened");
  auto read_exactly = [&](void* out, size_t n, const char* what) {
    size_t done = 0;
    while (done < n) {
      unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      int got = gzread(file.get(), static_cast<char*>(out) + done, chunk);
      if (got <= 0) {
        int err = 0;
        const char* msg = gzerror(file.get(), &err);
        throw DataError("'" + path + "' is truncated or corrupt while reading the " + what +
                        (err != Z_OK && err != Z_STREAM_END ? std::string(" (") + msg + ")" : ""));
      }
      done += static_cast<size_t>(got);
    }
  };

  std::array<unsigned char, 4> magic{};
  read_exactly(magic.data(), 4, "header");
  const int dims = magic[3];
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || dims != expected_dims)
    throw DataError("'" + path + "' is not an IDX file of unsigned bytes with " + std::to_string(expected_dims) +
                    " dimensions");
  std::vector<int64_t> shape(dims);
  uint64_t count = 1;
  for (int d = 0; d < dims; ++d) {
    unsigned char b[4];
    read_exactly(b, 4, "header");
    shape[d] = big_endian(b);
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(shape[d]), &count) || count > kMaxIdxBytes)
      throw DataError("'" + path + "' claims more than " + std::to_string(kMaxIdxBytes >> 30) +
                      " GiB of data in its header; it is not an MNIST-style file");
  }
  // The header is only a claim: memory grows with the bytes that really arrive, so a lying header costs nothing.
  auto data = std::make_shared<std::vector<uint8_t>>();
  data->reserve(static_cast<size_t>(std::min<uint64_t>(count, kReadPieceBytes)));
  while (data->size() < count) {
    const size_t piece = static_cast<size_t>(std::min<uint64_t>(count - data->size(), kReadPieceBytes));
    const size_t at = data->size();
    data->resize(at + piece);
    read_exactly(data->data() + at, piece, "data");
  }
  uint8_t* bytes = data->data();
  return at::from_blob(
      bytes, shape, [data](void*) mutable { data.reset(); }, at::TensorOptions().dtype(at::kByte));
}

ImageDataset load_idx_dataset(const std::string& folder, Split split, int64_t limit) {
  const std::string prefix = folder + "/" + (split == Split::Train ? "train" : "t10k");
  ImageDataset data;
  data.images = read_idx_file(prefix + "-images-idx3-ubyte", 3);
  data.labels = read_idx_file(prefix + "-labels-idx1-ubyte", 1).to(at::kLong);
  if (data.images.size(0) != data.labels.size(0))
    throw DataError("'" + prefix + "-images-idx3-ubyte' has " + std::to_string(data.images.size(0)) +
                    " images but the labels file has " + std::to_string(data.labels.size(0)) + " labels");
  if (data.labels.size(0) == 0) throw DataError("'" + prefix + "-labels-idx1-ubyte' holds no samples");
  if (data.images.size(1) != 28 || data.images.size(2) != 28)
    throw DataError("'" + prefix + "-images-idx3-ubyte' holds " + std::to_string(data.images.size(1)) + "x" +
                    std::to_string(data.images.size(2)) + " images; the models take 28x28 (MNIST, Fashion-MNIST)");
  const int64_t top_label = data.labels.max().item<int64_t>();
  if (top_label >= kClasses)
    throw DataError("'" + prefix + "-labels-idx1-ubyte' has label " + std::to_string(top_label) + "; the models have " +
                    std::to_string(kClasses) + " classes (0-9)");
  if (limit > 0 && limit < data.size()) {
    data.images = data.images.narrow(0, 0, limit);
    data.labels = data.labels.narrow(0, 0, limit);
  }
  return data;
}

std::pair<at::Tensor, at::Tensor> make_batch(const ImageDataset& data, const at::Tensor& indices) {
  constexpr double kMean = 0.1307, kStd = 0.3081;
  at::Tensor images = at::index_select(data.images, 0, indices).to(at::kFloat);
  images.div_(255.0).sub_(kMean).div_(kStd);
  return {images.unsqueeze(1), at::index_select(data.labels, 0, indices)};
}

}  // namespace ddprun::trainer
