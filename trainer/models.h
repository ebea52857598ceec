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

// Builds the model named by --model (one of known_models()); throws std::invalid_argument for other names.
// mnist_cnn is pytorch/examples mnist/main.py's Net: conv1(1->32, 3x3), conv2(32->64, 3x3), max-pool 2,
// dropout1(0.25), fc1(9216->128), dropout2(0.5), fc2(128->10), log_softmax.
std::shared_ptr<Model> make_model(const std::string& name);

}  // namespace ddprun::trainer
