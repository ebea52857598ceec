// The networks ddptrain can train, each with the parameter names and shapes of its Python original, so that state
// dicts move between the two.
#pragma once

#include <torch/nn/module.h>

#include <memory>
#include <string>

namespace ddprun::trainer {

// A classifier over [B, 1, 28, 28] images that returns log-probabilities [B, classes].
class Model : public torch::nn::Module {
 public:
  virtual at::Tensor forward(at::Tensor images) = 0;
};

// Builds the model named by --model (one of known_models()) for 28x28 images of `channels` channels (3 for
// resnet18 to take torchvision's weights) and `classes` classes; throws std::invalid_argument for other names.
// Every model returns log-probabilities (log_softmax), for nll_loss.
// - mnist_cnn: pytorch/examples mnist/main.py's Net: conv1(1->32, 3x3), conv2(32->64, 3x3), max-pool 2,
//   dropout1(0.25), fc1(9216->128), dropout2(0.5), fc2(128->10); 1 channel, 10 classes only.
// - mlp: flatten, fc1(784->4096), ReLU, fc2(4096->4096), ReLU, fc3(4096->10): 20 M parameters.
// - resnet18: torchvision.models.resnet18 with its exact names (conv1, bn1, layer1.0.conv1, ..., fc), BatchNorm
//   buffers included.
std::shared_ptr<Model> make_model(const std::string& name, int64_t channels = 1, int64_t classes = 10);

}  // namespace ddprun::trainer
