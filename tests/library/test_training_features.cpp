// The library's training features on one process: GradScaler (Python's schedule, its refusals, its state in a
// checkpoint both ways), ExponentialMovingAverage (AveragedModel's update and names), Autocast (what it casts, what it
// refuses, how scopes nest). The same features against Python, step for step: tests/trainer (Features.*).
#include "ddprun/checkpoint.h"
#include "ddprun/errors.h"
#include "ddprun/mixed_precision.h"
#include "ddprun/model_ema.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>
#include <torch/types.h>
#include <torch/utils.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>

namespace {

std::string temp_path(const std::string& name) {
  return "/tmp/ddprun_features_" + std::to_string(getpid()) + "_" + name;
}

// The message of the UsageError `call` throws ("" if none).
std::string usage_error(const std::function<void()>& call) {
  try {
    call();
  } catch (const ddprun::UsageError& e) {
    return e.what();
  }
  return "";
}

// One step's gradients: `value` in every element of the weight's gradient.
void set_grads(torch::nn::Linear& net, float value) {
  net->weight.mutable_grad() = torch::full_like(net->weight, value);
  net->bias.mutable_grad() = torch::zeros_like(net->bias);
}

}  // namespace

// Python's schedule: backoff on inf/NaN (step skipped, tracker reset), growth after growth_interval good steps, the
// gradients divided by the scale before the step.
TEST(GradScaler, GrowsBacksOffAndSkipsAsPython) {
  torch::nn::Linear net(2, 1);
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(1.0));
  ddprun::GradScalerOptions options;
  options.init_scale = 8;
  options.growth_interval = 2;
  ddprun::GradScaler scaler(options);
  const torch::Tensor loss = torch::tensor(1.5f);
  EXPECT_EQ(scaler.scale(loss).item<float>(), 12.0f);

  const torch::Tensor before = net->weight.detach().clone();
  set_grads(net, 8.0f);  // a scaled gradient of 1
  EXPECT_TRUE(scaler.step(sgd));
  EXPECT_TRUE(torch::allclose(net->weight, before - 1.0)) << "the step did not use the unscaled gradient";
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 8.0);
  EXPECT_EQ(scaler.state().growth_tracker, 1);

  scaler.scale(loss);
  set_grads(net, 8.0f);
  EXPECT_TRUE(scaler.step(sgd));
  scaler.update();
  EXPECT_EQ(scaler.get_scale(), 16.0) << "2 good steps of growth_interval 2: the scale doubles";
  EXPECT_EQ(scaler.state().growth_tracker, 0);

  for (const float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    scaler.scale(loss);
    set_grads(net, bad);
    const torch::Tensor held = net->weight.detach().clone();
    EXPECT_FALSE(scaler.step(sgd)) << "a step with inf/NaN gradients was taken";
    EXPECT_TRUE(torch::equal(net->weight, held));
    scaler.update();
  }
  EXPECT_EQ(scaler.get_scale(), 4.0) << "two backoffs of 0.5";

  scaler.scale(loss);
  set_grads(net, 1.0f);
  scaler.step(sgd);
  scaler.update(1024.0);  // an explicit new scale
  EXPECT_EQ(scaler.get_scale(), 1024.0);
}

// The habits Python refuses, and the one it lets through silently (gradients from an unscaled loss).
TEST(GradScaler, RefusesCallsOutOfOrder) {
  torch::nn::Linear net(2, 1);
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1));
  ddprun::GradScaler scaler;
  set_grads(net, 1.0f);
  EXPECT_NE(usage_error([&] { scaler.step(sgd); }).find("scale() was never called"), std::string::npos);

  scaler.scale(torch::tensor(1.0f));
  scaler.unscale_(sgd);
  EXPECT_NE(usage_error([&] { scaler.unscale_(sgd); }).find("already been called on this optimizer"),
            std::string::npos);
  scaler.step(sgd);
  EXPECT_NE(usage_error([&] { scaler.step(sgd); }).find("call update() each step"), std::string::npos);
  EXPECT_NE(usage_error([&] { scaler.unscale_(sgd); }).find("after step()"), std::string::npos);
  scaler.update();

  set_grads(net, 1.0f);  // loss.backward() without scaler.scale(loss)
  EXPECT_NE(usage_error([&] { scaler.step(sgd); }).find("scale() was not called since the last update()"),
            std::string::npos);
  EXPECT_NE(usage_error([&] { scaler.update(); }).find("no step() or unscale_()"), std::string::npos);

  auto half = torch::nn::Linear(2, 1);
  half->to(torch::kHalf);
  torch::optim::SGD half_sgd(half->parameters(), torch::optim::SGDOptions(0.1));
  half->weight.mutable_grad() = torch::ones_like(half->weight);
  scaler.scale(torch::tensor(1.0f));
  EXPECT_NE(usage_error([&] { scaler.unscale_(half_sgd); }).find("float16"), std::string::npos);

  EXPECT_NE(usage_error([&] { scaler.load_state({std::nan(""), 2, 0.5, 2000, 0}); }).find("scale"), std::string::npos);
  EXPECT_NE(usage_error([&] {
              scaler.load_state({1024, 0.5, 0.5, 2000, 0});
            }).find("growth_factor"),
            std::string::npos);
  EXPECT_NE(usage_error([&] { scaler.load_state({1024, 2, 0.5, 10, 10}); }).find("_growth_tracker"), std::string::npos);

  ddprun::GradScalerOptions off;
  off.enabled = false;
  ddprun::GradScaler disabled(off);
  const torch::Tensor loss = torch::tensor(3.0f);
  EXPECT_TRUE(disabled.scale(loss).is_same(loss));
  EXPECT_TRUE(disabled.step(sgd)) << "a disabled scaler is optimizer.step()";
  EXPECT_EQ(disabled.get_scale(), 1.0);
}

// "scaler" in a checkpoint: Python's five keys; it loads back; Python's disabled scaler ({}) loads as a fresh one;
// values out of range are refused and change nothing.
TEST(GradScaler, StateDictMovesThroughCheckpointsAndPython) {
  torch::nn::Linear net(2, 1);
  ddprun::GradScalerOptions options;
  options.init_scale = 256;
  options.growth_interval = 7;
  ddprun::GradScaler scaler(options);
  scaler.load_state({256, 3.0, 0.25, 7, 5});
  const std::string path = temp_path("scaler.pth");
  ddprun::save_checkpoint(path, ddprun::TrainingState(*net).grad_scaler(scaler), {1, 0});
  const std::string check =
      "/usr/bin/python3 -c \"import sys, torch; s = torch.load(sys.argv[1])['scaler']; "
      "assert s == {'scale': 256.0, 'growth_factor': 3.0, 'backoff_factor': 0.25, 'growth_interval': 7, "
      "'_growth_tracker': 5}, s\" " +
      path;
  EXPECT_EQ(std::system(check.c_str()), 0) << "Python does not see GradScaler's state dict";

  ddprun::GradScaler restored;
  ddprun::load_checkpoint(path, ddprun::TrainingState(*net).grad_scaler(restored));
  EXPECT_EQ(restored.get_scale(), 256.0);
  EXPECT_EQ(restored.state().growth_factor, 3.0);
  EXPECT_EQ(restored.state().backoff_factor, 0.25);
  EXPECT_EQ(restored.state().growth_interval, 7);
  EXPECT_EQ(restored.state().growth_tracker, 5);

  auto python_writes = [&](const std::string& scaler_dict) {
    const std::string command =
        "/usr/bin/python3 -c \"import sys, torch; torch.save({'model': {'weight': "
        "torch.zeros(1, 2), 'bias': torch.zeros(1)}, 'epoch': 0, 'scaler': " +
        scaler_dict + "}, sys.argv[1])\" " + path;
    ASSERT_EQ(std::system(command.c_str()), 0);
  };
  python_writes("{}");  // torchvision's --amp where CUDA is missing: a disabled scaler
  ddprun::GradScaler fresh;
  ddprun::load_checkpoint(path, ddprun::TrainingState(*net).grad_scaler(fresh));
  EXPECT_EQ(fresh.get_scale(), 65536.0);

  python_writes(
      "{'scale': float('inf'), 'growth_factor': 2.0, 'backoff_factor': 0.5, 'growth_interval': 2000, "
      "'_growth_tracker': 0}");
  try {
    ddprun::load_checkpoint(path, ddprun::TrainingState(*net).grad_scaler(restored));
    ADD_FAILURE() << "an inf scale was loaded";
  } catch (const ddprun::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'scaler'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(restored.get_scale(), 256.0) << "a refused load changed the scaler";
  std::remove(path.c_str());
}

// AveragedModel(use_buffers=True) with torchvision's ema_avg: a copy at construction, decay * avg + (1 - decay) *
// model at each update (BatchNorm statistics too), n_averaged counting, Python's names in the state dict.
TEST(ExponentialMovingAverage, AveragesWeightsAndBuffersAsTorchvision) {
  torch::manual_seed(1);
  auto make = [] { return torch::nn::Sequential(torch::nn::Linear(3, 2), torch::nn::BatchNorm1d(2)).ptr(); };
  auto model = make();
  auto ema = std::make_shared<ddprun::ExponentialMovingAverage>(*model, make(), 0.75);
  const auto& avg = ema->module();
  EXPECT_TRUE(torch::equal(avg.named_parameters()["0.weight"], model->named_parameters()["0.weight"]))
      << "the average does not start as the model (Python's deepcopy)";
  EXPECT_EQ(ema->n_averaged().item<int64_t>(), 0);

  model->train();
  model->forward(torch::randn({8, 3}));  // BatchNorm statistics move
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.add_(1.0);
  }
  const torch::Tensor w0 = model->named_parameters()["0.weight"].clone();
  ema->update_parameters(*model);  // n_averaged 0: a copy
  EXPECT_TRUE(torch::equal(ema->module().named_parameters()["0.weight"], w0));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.add_(2.0);
  }
  ema->update_parameters(*model);
  const torch::Tensor expected = w0 * 0.75 + (w0 + 2.0) * 0.25;
  EXPECT_TRUE(torch::equal(ema->module().named_parameters()["0.weight"], expected));
  EXPECT_TRUE(torch::equal(ema->module().named_buffers()["1.running_mean"], model->named_buffers()["1.running_mean"]))
      << "buffers are averaged too (use_buffers=True)";
  EXPECT_EQ(ema->n_averaged().item<int64_t>(), 2);

  std::vector<std::string> names;
  for (const auto& item : ema->named_buffers(/*recurse=*/false)) names.push_back(item.key());
  EXPECT_EQ(names, std::vector<std::string>{"n_averaged"});
  EXPECT_TRUE(ema->named_parameters().contains("module.0.weight"));
  for (const auto& p : ema->parameters()) EXPECT_FALSE(p.requires_grad()) << "an average needs no gradients";

  EXPECT_NE(usage_error([&] { ddprun::ExponentialMovingAverage(*model, model, 0.9); }).find("not the model itself"),
            std::string::npos);
  auto other = torch::nn::Sequential(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4)).ptr();
  EXPECT_NE(usage_error([&] { ddprun::ExponentialMovingAverage(*model, other, 0.9); }).find("'0.weight'"),
            std::string::npos);
  EXPECT_NE(usage_error([&] { ema->update_parameters(*other); }).find("same class"), std::string::npos);
  EXPECT_NE(usage_error([&] { ddprun::ExponentialMovingAverage(*model, make(), 1.5); }).find("decay"),
            std::string::npos);
}

// Autocast: matmuls run in bfloat16 on CPU inside the scope, in float32 after it; the previous state comes back when
// scopes nest; CPU float16 (which LibTorch cannot autocast to) is refused.
TEST(Autocast, CastsInsideTheScopeOnly) {
  const torch::Tensor a = torch::randn({4, 4}), b = torch::randn({4, 4});
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  {
    ddprun::Autocast outer(c10::kCPU);
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
    {
      ddprun::Autocast off(c10::kCPU, std::nullopt, /*enabled=*/false);
      EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat);
    }
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16) << "the inner scope did not restore the outer one";
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat);
  EXPECT_NE(usage_error([] { ddprun::Autocast bad(c10::kCPU, torch::kHalf); }).find("bfloat16 only"),
            std::string::npos);
  EXPECT_EQ(ddprun::default_autocast_dtype(c10::kCUDA), torch::kHalf);
}
