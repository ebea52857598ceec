// The model zoo: mnist_cnn, registered in the order and under the names pytorch/examples uses.
#include "trainer/models.h"

#include <ATen/ops/log_softmax.h>
#include <ATen/ops/max_pool2d.h>
#include <ATen/ops/relu.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>

#include <stdexcept>

namespace ddprun::trainer {
namespace {

class MnistCnn : public Model {
 public:
  MnistCnn();
  at::Tensor forward(at::Tensor images) override;

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::Dropout dropout1_{nullptr}, dropout2_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};

MnistCnn::MnistCnn() {
  conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3).stride(1)));
  conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).stride(1)));
  dropout1_ = register_module("dropout1", torch::nn::Dropout(0.25));
  dropout2_ = register_module("dropout2", torch::nn::Dropout(0.5));
  fc1_ = register_module("fc1", torch::nn::Linear(9216, 128));
  fc2_ = register_module("fc2", torch::nn::Linear(128, 10));
}

at::Tensor MnistCnn::forward(at::Tensor x) {
  x = at::relu(conv1_->forward(x));
  x = at::relu(conv2_->forward(x));
  x = at::max_pool2d(x, {2, 2});
  x = dropout1_->forward(x).flatten(1);
  x = at::relu(fc1_->forward(x));
  x = fc2_->forward(dropout2_->forward(x));
  return at::log_softmax(x, 1);
}

}  // namespace

std::shared_ptr<Model> make_model(const std::string& name) {
  if (name == "mnist_cnn") return std::make_shared<MnistCnn>();
  throw std::invalid_argument("unknown model '" + name + "'");
}

}  // namespace ddprun::trainer
