// The networks ddptrain can train, each with the parameter names and shapes of its Python original, so that state
// dicts move between the two.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>

#include <functional>

#include <memory>
#include <string>
#include <utility>

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
// `norm_layer`, as torchvision's resnet18(norm_layer=...): builds each BatchNorm of `channels` channels (the default:
// torch::nn::BatchNorm2d; ddptrain's --sync-bn gives ddprun::SyncBatchNorm), under BatchNorm's names.
using NormLayer = std::function<torch::nn::AnyModule(int64_t channels)>;
std::shared_ptr<Model> make_model(const std::string& name, int64_t channels = 1, int64_t classes = 10,
                                  const NormLayer& norm_layer = nullptr);

// The training loss on a model's log-probabilities: nll_loss, or with `label_smoothing` > 0 what torchvision's
// nn.CrossEntropyLoss(label_smoothing=...) gives on the logits: (1 - e) * nll + e * the mean over classes of
// -log p (log_softmax of log-probabilities is the identity, up to rounding). Mean over the batch.
at::Tensor classification_loss(const at::Tensor& log_probs, const at::Tensor& labels, double label_smoothing);

// How many rows of `log_probs` have their label as their highest score, and among their 5 highest (capped at the
// number of classes): torchvision's acc1 and acc5 counts, from one topk.
std::pair<int64_t, int64_t> count_top1_top5(const at::Tensor& log_probs, const at::Tensor& labels);

}  // namespace ddprun::trainer
