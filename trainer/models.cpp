// The model zoo: mnist_cnn (pytorch/examples' names), mlp, and resnet18 with torchvision's exact parameter and buffer
// names and registration order (so torchvision.models.resnet18()'s state dict loads into it, and back).
#include "trainer/models.h"

#include <ATen/ops/adaptive_avg_pool2d.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/max_pool2d.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/relu.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
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

// flatten, fc1 = Linear(784, 4096), ReLU, fc2 = Linear(4096, 4096), ReLU, fc3 = Linear(4096, 10), log_softmax:
// 20 M parameters and little arithmetic per byte of gradient (the communication-heavy case).
class Mlp : public Model {
 public:
  Mlp(int64_t inputs, int64_t classes) {
    fc1_ = register_module("fc1", torch::nn::Linear(inputs, 4096));
    fc2_ = register_module("fc2", torch::nn::Linear(4096, 4096));
    fc3_ = register_module("fc3", torch::nn::Linear(4096, classes));
  }
  at::Tensor forward(at::Tensor x) override {
    x = at::relu(fc1_->forward(x.flatten(1)));
    x = at::relu(fc2_->forward(x));
    return at::log_softmax(fc3_->forward(x), 1);
  }

 private:
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr}, fc3_{nullptr};
};

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(false));
}

// torchvision's BasicBlock: conv1, bn1, relu, conv2, bn2, downsample (a 1x1 conv and a BatchNorm when the shape
// changes).
class BasicBlock : public torch::nn::Module {
 public:
  BasicBlock(int64_t in, int64_t out, int64_t stride, const NormLayer& norm) {
    conv1_ = register_module("conv1", conv(in, out, 3, stride, 1));
    bn1_ = norm(out);
    register_module("bn1", bn1_.ptr());
    conv2_ = register_module("conv2", conv(out, out, 3, 1, 1));
    bn2_ = norm(out);
    register_module("bn2", bn2_.ptr());
    if (stride != 1 || in != out) {
      torch::nn::Sequential downsample(conv(in, out, 1, stride, 0));
      downsample->push_back(norm(out));
      downsample_ = register_module("downsample", downsample);
    }
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor out = at::relu(bn1_.forward<at::Tensor>(conv1_->forward(x)));
    out = bn2_.forward<at::Tensor>(conv2_->forward(out));
    return at::relu(out + (downsample_ ? downsample_->forward(x) : x));
  }

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::AnyModule bn1_, bn2_;
  torch::nn::Sequential downsample_{nullptr};
};

// torchvision.models.resnet18: conv1 (7x7, stride 2), bn1, relu, maxpool (3x3, stride 2), layer1..layer4 of two
// BasicBlocks each (64, 128, 256, 512 channels), adaptive average pool, fc; log_softmax on top for nll_loss (not a
// parameter, so the state dict is torchvision's). 28x28 images come out of layer4 as 1x1.
class ResNet18 : public Model {
 public:
  ResNet18(int64_t channels, int64_t classes, const NormLayer& norm) {
    conv1_ = register_module("conv1", conv(channels, 64, 7, 2, 3));
    bn1_ = norm(64);
    register_module("bn1", bn1_.ptr());
    int64_t in = 64;
    const int64_t widths[4] = {64, 128, 256, 512};
    for (int layer = 0; layer < 4; ++layer) {
      torch::nn::ModuleList blocks;
      blocks->push_back(std::make_shared<BasicBlock>(in, widths[layer], layer == 0 ? 1 : 2, norm));
      blocks->push_back(std::make_shared<BasicBlock>(widths[layer], widths[layer], 1, norm));
      layers_[layer] = register_module("layer" + std::to_string(layer + 1), blocks);
      in = widths[layer];
    }
    fc_ = register_module("fc", torch::nn::Linear(512, classes));
  }
  at::Tensor forward(at::Tensor x) override {
    x = at::relu(bn1_.forward<at::Tensor>(conv1_->forward(x)));
    x = at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
    for (auto& blocks : layers_)
      for (const auto& block : *blocks) x = block->as<BasicBlock>()->forward(x);
    x = at::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return at::log_softmax(fc_->forward(x), 1);
  }

 private:
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::AnyModule bn1_;
  torch::nn::ModuleList layers_[4] = {torch::nn::ModuleList(nullptr), torch::nn::ModuleList(nullptr),
                                      torch::nn::ModuleList(nullptr), torch::nn::ModuleList(nullptr)};
  torch::nn::Linear fc_{nullptr};
};

}  // namespace

std::shared_ptr<Model> make_model(const std::string& name, int64_t channels, int64_t classes,
                                  const NormLayer& norm_layer) {
  if (name == "resnet18")
    return std::make_shared<ResNet18>(
        channels, classes, norm_layer ? norm_layer : [](int64_t features) {
          return torch::nn::AnyModule(torch::nn::BatchNorm2d(features));
        });
  if (name == "mlp") return std::make_shared<Mlp>(channels * 28 * 28, classes);
  if (name == "mnist_cnn") {
    if (channels != 1 || classes != 10)
      throw std::invalid_argument("mnist_cnn takes 1-channel 28x28 images and 10 classes");
    return std::make_shared<MnistCnn>();
  }
  throw std::invalid_argument("unknown model '" + name + "'");
}

at::Tensor classification_loss(const at::Tensor& log_probs, const at::Tensor& labels, double label_smoothing) {
  if (label_smoothing == 0) return at::nll_loss(log_probs, labels);
  return at::cross_entropy_loss(log_probs, labels, /*weight=*/{}, at::Reduction::Mean, /*ignore_index=*/-100,
                                label_smoothing);
}

std::pair<int64_t, int64_t> count_top1_top5(const at::Tensor& log_probs, const at::Tensor& labels) {
  const at::Tensor top = std::get<1>(log_probs.topk(std::min<int64_t>(5, log_probs.size(1)), /*dim=*/1));
  const at::Tensor hit = top.eq(labels.view({-1, 1}));  // [rows, 5], at most one true per row
  return {hit.select(1, 0).sum().item<int64_t>(), hit.any(1).sum().item<int64_t>()};
}

}  // namespace ddprun::trainer
