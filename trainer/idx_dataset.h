// MNIST-style IDX data sets (images idx3-ubyte, labels idx1-ubyte), gzipped or not, held in memory as uint8 images
// and int64 labels; batches come out as normalized float tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ddprun::trainer {

class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Reads an IDX file (`path`, or `path` + ".gz" when only that exists) and returns its contents as a uint8 tensor
// of the shape the header gives. Throws DataError naming the path for a missing, short or malformed file.
at::Tensor read_idx_file(const std::string& path, int expected_dims);

struct ImageDataset {
  at::Tensor images;  // [N, rows, cols] uint8
  at::Tensor labels;  // [N] int64
  int64_t size() const { return labels.size(0); }
};

enum class Split { Train, Test };

// MNIST and Fashion-MNIST: 28x28 images, labels 0-9.
inline constexpr int64_t kClasses = 10;

// Loads `<folder>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`; `limit` > 0 keeps only the first `limit`
// samples. Throws DataError when files are missing, images and labels disagree, images are not 28x28 or a label is
// not a class 0-9.
ImageDataset load_idx_dataset(const std::string& folder, Split split, int64_t limit);

// The images at `indices` as a [B, 1, rows, cols] float tensor normalized like pytorch/examples' MNIST
// ((x / 255 - 0.1307) / 0.3081), and their labels.
std::pair<at::Tensor, at::Tensor> make_batch(const ImageDataset& data, const at::Tensor& indices);

}  // namespace ddprun::trainer
