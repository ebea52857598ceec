// The library's checkpoints of torch::optim optimizers (SGD, Adam, AdamW): a save and a load into a new model and
// optimizer continue training exactly as the original would, Python's torch.optim loads the file, and another
// optimizer's state is refused.
#include "ddprun/checkpoint.h"

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/types.h>
#include <torch/utils.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace {

using MakeOptimizer = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor>)>;

struct OptimizerCase {
  std::string python_name;  // the torch.optim class that loads the file
  MakeOptimizer make;
};

std::vector<OptimizerCase> optimizer_cases() {
  return {
      {"SGD",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::SGD>(
             p, torch::optim::SGDOptions(0.1).momentum(0.9).nesterov(true).weight_decay(0.01));
       }},
      {"Adam",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(0.01).amsgrad(true));
       }},
      {"AdamW",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::AdamW>(p, torch::optim::AdamWOptions(0.01).weight_decay(0.05));
       }},
  };
}

void train_steps(torch::nn::Linear& net, torch::optim::Optimizer& optimizer, int steps, int64_t seed) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  for (int i = 0; i < steps; ++i) {
    const at::Tensor x = torch::randn({8, 4});
    optimizer.zero_grad();
    net->forward(x).pow(2).sum().backward();
    optimizer.step();
  }
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("ddprun_library_" + std::to_string(getpid()) + "_" + name))
      .string();
}

TEST(LibraryCheckpoint, OptimizerStateResumesExactlyAndLoadsInPython) {
  for (const OptimizerCase& c : optimizer_cases()) {
    SCOPED_TRACE(c.python_name);
    torch::manual_seed(1);
    torch::nn::Linear net(4, 3);
    auto optimizer = c.make(net->parameters());
    train_steps(net, *optimizer, 3, 10);
    const std::string path = temp_path(c.python_name + ".pth");
    ddprun::save_checkpoint(path, {net.get(), optimizer.get(), nullptr}, {2, 0});

    torch::manual_seed(2);  // other weights, no optimizer state: all of it must come from the file
    torch::nn::Linear restored(4, 3);
    auto restored_optimizer = c.make(restored->parameters());
    const ddprun::ResumePoint at = ddprun::load_checkpoint(path, {restored.get(), restored_optimizer.get(), nullptr});
    EXPECT_EQ(at.epoch, 2);
    EXPECT_EQ(at.step, 0);

    train_steps(net, *optimizer, 3, 20);
    train_steps(restored, *restored_optimizer, 3, 20);
    EXPECT_TRUE(torch::equal(net->weight, restored->weight)) << "weights differ after the resume";
    EXPECT_TRUE(torch::equal(net->bias, restored->bias)) << "biases differ after the resume";

    const std::string python = "/usr/bin/python3 " + std::string(DDPRUN_SOURCE_DIR) +
                               "/tests/library/load_in_python.py " + path + " " + c.python_name;
    EXPECT_EQ(std::system(python.c_str()), 0) << python;
    std::remove(path.c_str());
  }
}

TEST(LibraryCheckpoint, AnotherOptimizersStateIsRefused) {
  torch::nn::Linear net(4, 3);
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(0.01));
  train_steps(net, adam, 1, 3);
  const std::string path = temp_path("adam_for_sgd.pth");
  ddprun::save_checkpoint(path, {net.get(), &adam, nullptr}, {1, 0});
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  try {
    ddprun::load_checkpoint(path, {net.get(), &sgd, nullptr});
    ADD_FAILURE() << "SGD took Adam's state";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find("not SGD's"), std::string::npos) << what;
  }
  EXPECT_TRUE(sgd.state().empty()) << "a refused load changed the optimizer";
  EXPECT_EQ(sgd.param_groups()[0].options().get_lr(), 0.1) << "a refused load changed the learning rate";
  std::remove(path.c_str());
}

}  // namespace
