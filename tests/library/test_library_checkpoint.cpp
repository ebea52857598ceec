// The library's checkpoints on one process: torch::optim optimizers (SGD, Adam, AdamW) saved and loaded into a new
// model and optimizer continue training exactly as the original would, Python's torch.optim loads the file, another
// optimizer's state is refused; entries of the user's own (a second model and optimizer, tensors, numbers, text) come
// back, a file always has torchvision's five keys, and names the library keeps for itself are refused.
#include "ddprun/checkpoint.h"
#include "ddprun/errors.h"

#include <gtest/gtest.h>
#include <torch/nn/modules/batchnorm.h>
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
#include <fstream>
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
    ddprun::save_checkpoint(path, ddprun::TrainingState(*net).optimizer(*optimizer), {2, 0});

    torch::manual_seed(2);  // other weights, no optimizer state: all of it must come from the file
    torch::nn::Linear restored(4, 3);
    auto restored_optimizer = c.make(restored->parameters());
    const ddprun::ResumePoint at =
        ddprun::load_checkpoint(path, ddprun::TrainingState(*restored).optimizer(*restored_optimizer));
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
  ddprun::save_checkpoint(path, ddprun::TrainingState(*net).optimizer(adam), {1, 0});
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  try {
    ddprun::load_checkpoint(path, ddprun::TrainingState(*net).optimizer(sgd));
    ADD_FAILURE() << "SGD took Adam's state";
  } catch (const ddprun::SetUpError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find("not SGD's"), std::string::npos) << what;
  }
  EXPECT_TRUE(sgd.state().empty()) << "a refused load changed the optimizer";
  EXPECT_EQ(sgd.param_groups()[0].options().get_lr(), 0.1) << "a refused load changed the learning rate";
  std::remove(path.c_str());
}

// Runs `code` with /usr/bin/python3 (torch) with sys.argv[1] = path, after checking the file's pickle against PyTorch
// 2.x's weights_only allow-list (tests/checkpoint/interop.py: Python 1.13's own weights_only loader refuses floats);
// true when it exits 0.
bool python_accepts(const std::string& path, const std::string& code) {
  const std::string script = temp_path("check.py");
  std::ofstream(script) << "import sys, torch\nsys.path.insert(0, '" << DDPRUN_SOURCE_DIR
                        << "/tests/checkpoint')\nfrom interop import audit\naudit(sys.argv[1])\n"
                        << code;
  const std::string command = "/usr/bin/python3 " + script + " " + path;
  const bool ok = std::system(command.c_str()) == 0;
  std::remove(script.c_str());
  return ok;
}

TEST(LibraryCheckpoint, NamedEntriesComeBackAndPythonSeesThem) {
  torch::manual_seed(3);
  torch::nn::Linear net(4, 3), ema(4, 3);
  torch::nn::BatchNorm1d norm(3);
  norm->forward(torch::randn({8, 3}));  // running statistics and num_batches_tracked
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::Adam adam(ema->parameters(), torch::optim::AdamOptions(0.01));
  train_steps(net, sgd, 2, 4);
  train_steps(ema, adam, 2, 5);
  at::Tensor centers = torch::randn({5, 2});
  double best = 0.8125;
  int64_t seen = 123456789012;
  std::string note = "warm-up done";
  const std::string path = temp_path("named.pth");
  ddprun::TrainingState saved(*net);
  saved.optimizer(sgd).module("model_ema", *ema).optimizer("optimizer_ema", adam).module("norm", *norm);
  saved.tensor("centers", centers).number("best_acc1", best).number("samples_seen", seen).text("note", note);
  saved.arg("lr", 0.1).arg("model", std::string("linear")).arg("epochs", int64_t{90}).arg("amp", false);
  ddprun::save_checkpoint(path, saved, {7, 0});

  torch::manual_seed(9);
  torch::nn::Linear net2(4, 3), ema2(4, 3);
  torch::nn::BatchNorm1d norm2(3);
  torch::optim::SGD sgd2(net2->parameters(), torch::optim::SGDOptions(0.5).momentum(0.9));
  torch::optim::Adam adam2(ema2->parameters(), torch::optim::AdamOptions(0.5));
  at::Tensor centers2 = torch::zeros({5, 2});
  double best2 = 0;
  int64_t seen2 = 0;
  std::string note2;
  ddprun::TrainingState loaded(*net2);
  loaded.optimizer(sgd2).module("model_ema", *ema2).optimizer("optimizer_ema", adam2).module("norm", *norm2);
  loaded.tensor("centers", centers2).number("best_acc1", best2).number("samples_seen", seen2).text("note", note2);
  EXPECT_EQ(ddprun::load_checkpoint(path, loaded).epoch, 7);
  EXPECT_TRUE(torch::equal(ema->weight, ema2->weight));
  EXPECT_TRUE(torch::equal(norm->running_mean, norm2->running_mean));
  EXPECT_EQ(norm2->num_batches_tracked.item<int64_t>(), 1);
  EXPECT_TRUE(torch::equal(centers, centers2));
  EXPECT_EQ(best2, best);
  EXPECT_EQ(seen2, seen);
  EXPECT_EQ(note2, note);
  train_steps(ema, adam, 2, 6);  // Adam's moments came back too: the next steps agree
  train_steps(ema2, adam2, 2, 6);
  EXPECT_TRUE(torch::equal(ema->weight, ema2->weight)) << "the second optimizer's state did not come back";

  EXPECT_TRUE(python_accepts(path, R"(
ck = torch.load(sys.argv[1])
assert {"model", "optimizer", "lr_scheduler", "epoch", "args", "model_ema", "optimizer_ema", "norm", "centers",
        "best_acc1", "samples_seen", "note"} <= set(ck), sorted(ck)
assert ck["epoch"] == 6 and ck["lr_scheduler"] == {}, (ck["epoch"], ck["lr_scheduler"])
assert ck["args"] == {"lr": 0.1, "model": "linear", "epochs": 90, "amp": False}, ck["args"]
assert ck["best_acc1"] == 0.8125 and ck["samples_seen"] == 123456789012 and ck["note"] == "warm-up done"
assert ck["centers"].shape == (5, 2) and ck["norm"]["num_batches_tracked"].item() == 1
ema = torch.nn.Linear(4, 3)
ema.load_state_dict(ck["model_ema"])
torch.optim.Adam(ema.parameters()).load_state_dict(ck["optimizer_ema"])
torch.nn.BatchNorm1d(3).load_state_dict(ck["norm"])
)")) << "Python does not see the named entries as saved";
  std::remove(path.c_str());
}

TEST(LibraryCheckpoint, AModelAloneStillHasTorchvisionsKeys) {
  torch::nn::Linear net(4, 3);
  const std::string path = temp_path("model_only.pth");
  ddprun::save_checkpoint(path, ddprun::TrainingState(*net), {1, 0});
  // torchvision's loading code reads all five: an empty optimizer and schedule, not a KeyError.
  EXPECT_TRUE(python_accepts(path, R"(
ck = torch.load(sys.argv[1])
assert {"model", "optimizer", "lr_scheduler", "epoch", "args"} <= set(ck), sorted(ck)
assert ck["optimizer"] == {} and ck["lr_scheduler"] == {} and ck["args"] == {} and ck["epoch"] == 0, ck
)")) << "a checkpoint of a model alone lacks one of model, optimizer, lr_scheduler, epoch, args";
  std::remove(path.c_str());
}

TEST(LibraryCheckpoint, NamesTheLibraryKeepsAreRefused) {
  torch::nn::Linear net(4, 3), other(4, 3);
  double value = 0;
  for (const char* key : {"model", "optimizer", "lr_scheduler", "epoch", "args", "ddprun"}) {
    SCOPED_TRACE(key);
    ddprun::TrainingState state(*net);
    EXPECT_THROW(state.module(key, *other), ddprun::UsageError);
    EXPECT_THROW(state.number(key, value), ddprun::UsageError);
  }
  ddprun::TrainingState state(*net);
  state.module("model_ema", *other);
  EXPECT_THROW(state.number("model_ema", value), ddprun::UsageError) << "a name given twice was taken";
  EXPECT_THROW(state.module("", *other), ddprun::UsageError);
}

TEST(LibraryCheckpoint, AMissingEntryIsNamedAndNothingChanges) {
  torch::manual_seed(4);
  torch::nn::Linear net(4, 3), ema(4, 3);
  const std::string path = temp_path("no_ema.pth");
  ddprun::save_checkpoint(path, ddprun::TrainingState(*net), {2, 0});
  torch::nn::Linear net2(4, 3), ema2(4, 3);
  const at::Tensor before = net2->weight.clone();
  try {
    ddprun::load_checkpoint(path, ddprun::TrainingState(*net2).module("model_ema", *ema2));
    ADD_FAILURE() << "a file without model_ema loaded into a state that names it";
  } catch (const ddprun::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model_ema"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(torch::equal(before, net2->weight)) << "a refused load changed the model";
  std::remove(path.c_str());
}

}  // namespace
