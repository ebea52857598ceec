// Unit tests of ddptrain's pieces: flags, IDX files, the models' state dicts, fault injection.
#include "checkpoint/module_state.h"
#include "checkpoint/torch_file.h"
#include "ddprun/checkpoint.h"
#include "ddprun/mixed_precision.h"
#include "ddprun/model_ema.h"
#include "tests/test_helpers.h"
#include "trainer/fault_injection.h"
#include "trainer/idx_dataset.h"
#include "trainer/models.h"
#include "trainer/options.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>
#include <unistd.h>
#include <zlib.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>

using namespace ddprun::trainer;
namespace fs = std::filesystem;

namespace {

ParseResult parse(std::vector<std::string> args) {
  args.insert(args.begin(), "ddptrain");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_options(static_cast<int>(argv.size()), argv.data());
}

std::string usage_error(std::vector<std::string> args) {
  try {
    parse(std::move(args));
  } catch (const UsageError& e) {
    return e.what();
  }
  return "no error";
}

using ddprun::test_support::python_reference;
using ddprun::test_support::temp_folder;

std::string idx_bytes(const std::vector<uint32_t>& shape, const std::vector<uint8_t>& data, int dims) {
  std::string bytes{'\0', '\0', '\x08', static_cast<char>(dims)};
  for (uint32_t d : shape)
    for (int s = 24; s >= 0; s -= 8) bytes.push_back(static_cast<char>((d >> s) & 0xff));
  bytes.append(data.begin(), data.end());
  return bytes;
}

}  // namespace

TEST(Options, DefaultsAndTorchvisionFlagNames) {
  ParseResult r = parse({"--model", "mnist_cnn", "-b", "32", "--lr", "0.1", "--wd", "0.001", "--lr-step-size", "2",
                         "--lr-gamma", "0.5", "--epochs", "3", "--train-limit", "100", "--seed", "7"});
  EXPECT_EQ(r.options.batch_size, 32);
  EXPECT_DOUBLE_EQ(r.options.lr, 0.1);
  EXPECT_DOUBLE_EQ(r.options.weight_decay, 0.001);
  EXPECT_EQ(r.options.lr_step_size, 2);
  EXPECT_EQ(r.options.train_limit, 100);
  EXPECT_EQ(r.options.seed, 7);
  EXPECT_EQ(parse({}).options.data_path, "/usr/share/datasets/fashion-mnist");
  EXPECT_DOUBLE_EQ(parse({"--weight-decay", "0.5"}).options.weight_decay, 0.5);
}

TEST(Options, HelpListsEveryFlagWithDefaults) {
  ParseResult r = parse({"--help"});
  ASSERT_TRUE(r.help_requested);
  for (const char* flag : {"--data-path", "--model", "--epochs", "--batch-size", "-b", "--lr", "--momentum",
                           "--weight-decay", "--wd", "--lr-step-size", "--lr-gamma", "--output-dir", "--resume",
                           "--start-epoch", "--seed", "--train-limit", "--test-limit", "--config", "--threads"})
    EXPECT_NE(r.help_text.find(flag), std::string::npos) << flag;
  EXPECT_NE(r.help_text.find("(=0.05)"), std::string::npos) << r.help_text;
}

TEST(Options, ConfigFileFillsInAndFlagsWin) {
  fs::path dir = temp_folder("config");
  std::ofstream(dir / "run.ini") << "lr = 0.2\nepochs = 7\nbatch-size = 16\nwd = 0.3\n";
  ParseResult r = parse({"--config", (dir / "run.ini").string(), "--epochs", "2"});
  EXPECT_DOUBLE_EQ(r.options.lr, 0.2);
  EXPECT_EQ(r.options.batch_size, 16);
  EXPECT_EQ(r.options.epochs, 2);
  EXPECT_DOUBLE_EQ(r.options.weight_decay, 0.3);
  // The flag wins over the file even under the alias's other name.
  EXPECT_DOUBLE_EQ(parse({"--config", (dir / "run.ini").string(), "--weight-decay", "0.01"}).options.weight_decay,
                   0.01);
  fs::remove_all(dir);
}

TEST(Options, BadInputNamesTheFlag) {
  EXPECT_NE(usage_error({"--lr", "abc"}).find("--lr"), std::string::npos);
  EXPECT_NE(usage_error({"--epochs", "0"}).find("--epochs 0 is out of range"), std::string::npos);
  EXPECT_NE(usage_error({"--model", "resnet9000"}).find("--model 'resnet9000' is not a known model"),
            std::string::npos);
  EXPECT_NE(usage_error({"--no-such-flag"}).find("no-such-flag"), std::string::npos);
  EXPECT_NE(usage_error({"--opt", "lamb"}).find("--opt 'lamb' is not a known optimizer; choose one of: sgd"),
            std::string::npos);
  EXPECT_NE(usage_error({"--lr-scheduler", "onecycle"}).find("not a known learning-rate scheduler"), std::string::npos);
  EXPECT_NE(usage_error({"--lr-warmup-method", "exp"}).find("choose one of: linear, constant"), std::string::npos);
  EXPECT_NE(usage_error({"--lr-scheduler", "cosineannealinglr", "--epochs", "3", "--lr-warmup-epochs", "3"})
                .find("leaves no epoch"),
            std::string::npos);
  EXPECT_NE(usage_error({"--grad-sync", "ring"}).find("choose one of: ddp, per-param"), std::string::npos);
  EXPECT_NE(usage_error({"--lr-warmup-decay", "0"}).find("--lr-warmup-decay 0 is out of range"), std::string::npos);
  EXPECT_NE(usage_error({"--config", "/nonexistent/x.ini"}).find("--config '/nonexistent/x.ini' cannot be opened"),
            std::string::npos);
  EXPECT_NE(usage_error({"--wd", "0.1", "--weight-decay", "0.2"}).find("same flag"), std::string::npos);
  EXPECT_NE(usage_error({"--label-smoothing", "-0.1"}).find("--label-smoothing -0.1 is out of range"),
            std::string::npos);
  EXPECT_NE(usage_error({"--label-smoothing", "nan"}).find("must be a finite number"), std::string::npos);
  EXPECT_NE(usage_error({"--test-only"}).find("give it with --resume"), std::string::npos);
}

TEST(IdxDataset, ReadsPlainAndGzippedFiles) {
  fs::path dir = temp_folder("idx");
  const std::string bytes = idx_bytes({3, 2, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 3);
  std::ofstream(dir / "plain-idx3-ubyte", std::ios::binary) << bytes;
  gzFile gz = gzopen((dir / "zipped-idx3-ubyte.gz").c_str(), "wb");
  gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(gz);
  for (const char* name : {"plain-idx3-ubyte", "zipped-idx3-ubyte"}) {
    at::Tensor t = read_idx_file((dir / name).string(), 3);
    EXPECT_EQ(t.sizes(), at::IntArrayRef({3, 2, 2})) << name;
    EXPECT_EQ(t[2][1][1].item<int>(), 11) << name;
  }
  fs::remove_all(dir);
}

TEST(IdxDataset, RefusesMissingTruncatedAndForeignFiles) {
  fs::path dir = temp_folder("idx_bad");
  auto error_of = [&](const std::string& name, int dims) -> std::string {
    try {
      read_idx_file((dir / name).string(), dims);
    } catch (const DataError& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(error_of("absent", 3).find("not found"), std::string::npos);
  std::ofstream(dir / "short", std::ios::binary) << idx_bytes({10, 28, 28}, {1, 2, 3}, 3);
  EXPECT_NE(error_of("short", 3).find("truncated"), std::string::npos);
  std::ofstream(dir / "text", std::ios::binary) << "hello, this is not an IDX file";
  EXPECT_NE(error_of("text", 3).find("not an IDX file"), std::string::npos);
  std::ofstream(dir / "labels", std::ios::binary) << idx_bytes({2}, {1, 2}, 1);
  EXPECT_NE(error_of("labels", 3).find("3 dimensions"), std::string::npos);
  fs::remove_all(dir);
}

TEST(IdxDataset, LoadsFashionMnistWithALimit) {
  const std::string folder = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(folder + "/train-labels-idx1-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  ImageDataset test = load_idx_dataset(folder, Split::Test, 0);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(test.images.sizes(), at::IntArrayRef({10000, 28, 28}));
  EXPECT_EQ(test.labels.max().item<int64_t>(), 9);
  ImageDataset train = load_idx_dataset(folder, Split::Train, 1234);
  EXPECT_EQ(train.size(), 1234);
  auto [images, labels] = make_batch(train, at::arange(5, at::kLong));
  EXPECT_EQ(images.sizes(), at::IntArrayRef({5, 1, 28, 28}));
  EXPECT_EQ(images.scalar_type(), at::kFloat);
  EXPECT_NEAR(images.min().item<double>(), -0.1307 / 0.3081, 1e-5);
}

TEST(MnistCnn, HasPytorchExamplesNamesAndShapes) {
  auto model = make_model("mnist_cnn");
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected{
      {"conv1.weight", {32, 1, 3, 3}}, {"conv1.bias", {32}}, {"conv2.weight", {64, 32, 3, 3}}, {"conv2.bias", {64}},
      {"fc1.weight", {128, 9216}},     {"fc1.bias", {128}},  {"fc2.weight", {10, 128}},        {"fc2.bias", {10}}};
  auto state = ddprun::checkpoint::module_state_dict(*model);
  ASSERT_EQ(state.entries().size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(state.entries()[i].first.to_string(), expected[i].first);
    EXPECT_EQ(state.entries()[i].second.to_tensor().sizes(), at::IntArrayRef(expected[i].second));
  }
  at::Tensor out = model->forward(torch::zeros({3, 1, 28, 28}));
  EXPECT_EQ(out.sizes(), at::IntArrayRef({3, 10}));
  EXPECT_THROW(make_model("nope"), std::invalid_argument);
}

TEST(Models, MlpIsThreeLinearLayersOfTwentyMillionParameters) {
  auto model = make_model("mlp");
  const auto state = ddprun::checkpoint::module_state_dict(*model);
  std::vector<std::string> names;
  for (const auto& entry : state.entries()) names.push_back(entry.first.to_string());
  EXPECT_EQ(names,
            (std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}));
  int64_t count = 0;
  for (const at::Tensor& p : model->parameters()) count += p.numel();
  EXPECT_EQ(count, 784 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10);  // 20 037 642
  at::Tensor out = model->forward(torch::zeros({3, 1, 28, 28}));
  EXPECT_EQ(out.sizes(), at::IntArrayRef({3, 10}));
  EXPECT_TRUE(out.exp().sum(1).allclose(torch::ones({3})));  // log-probabilities
}

TEST(Models, Resnet18TakesTorchvisionsWeightsAndGivesThemBack) {
  const fs::path dir = temp_folder("resnet18");
  const auto expected = python_reference("resnet18_export " + dir.string());
  ASSERT_EQ(expected.size(), 1u) << "python reference failed (needs python3-torchvision)";
  auto model = make_model("resnet18", 3, 10);
  ddprun::checkpoint::load_module_state_dict(*model,
                                             ddprun::checkpoint::load((dir / "torchvision_resnet18.pth").string()));
  model->eval();
  const at::Tensor out =
      model->forward(torch::linspace(-1, 1, 2 * 3 * 28 * 28, torch::kFloat).view({2, 3, 28, 28})).flatten();
  ASSERT_EQ(out.numel(), static_cast<int64_t>(expected[0].size()));
  for (int64_t i = 0; i < out.numel(); ++i) EXPECT_NEAR(out[i].item<double>(), expected[0][i], 1e-4) << i;

  ddprun::checkpoint::save(ddprun::checkpoint::module_state_dict(*model), (dir / "ours.pth").string());
  const auto verdict = python_reference("resnet18_import " + (dir / "ours.pth").string() + " " +
                                        (dir / "torchvision_resnet18.pth").string());
  ASSERT_EQ(verdict.size(), 1u);
  EXPECT_EQ(verdict[0], std::vector<double>{1}) << "torchvision did not take our state dict back unchanged";

  // 1-channel 28x28 images, as ddptrain feeds it: the same names, conv1 with one input channel.
  auto gray = make_model("resnet18");
  int64_t count = 0;
  for (const at::Tensor& p : gray->parameters()) count += p.numel();
  EXPECT_EQ(count, 11175370);  // torchvision's resnet18(num_classes=10) with a 1-channel conv1
  EXPECT_EQ(gray->forward(torch::zeros({2, 1, 28, 28})).sizes(), at::IntArrayRef({2, 10}));
  fs::remove_all(dir);
}

// --label-smoothing and test_acc5 against torchvision's train.py: its criterion on the logits against ours on the
// models' log-probabilities (loss and gradient of the logits), and its utils.accuracy's top-1 and top-5 counts.
TEST(Loss, LabelSmoothingAndTopFiveAsTorchvision) {
  for (const double smoothing : {0.0, 0.1, 0.5}) {
    SCOPED_TRACE(smoothing);
    const auto expected = python_reference("loss " + std::to_string(smoothing));
    ASSERT_EQ(expected.size(), 3u) << "python reference failed";
    at::Tensor logits = (at::sin(at::arange(640, at::kFloat) * 0.37) * 3).view({64, 10}).requires_grad_();
    const at::Tensor labels = at::arange(64, at::kLong).remainder(10);
    at::Tensor loss = ddprun::trainer::classification_loss(at::log_softmax(logits, 1), labels, smoothing);
    loss.backward();
    EXPECT_NEAR(loss.item<double>(), expected[0][0], 1e-6);
    const at::Tensor grad = logits.grad().flatten().to(at::kDouble);
    ASSERT_EQ(grad.numel(), static_cast<int64_t>(expected[1].size()));
    const at::Tensor python_grad = at::tensor(expected[1], at::kDouble);
    EXPECT_LT((grad - python_grad).abs().max().item<double>(), 1e-7);
    const auto [top1, top5] = ddprun::trainer::count_top1_top5(logits.detach(), labels);
    EXPECT_EQ(top1, static_cast<int64_t>(expected[2][0]));
    EXPECT_EQ(top5, static_cast<int64_t>(expected[2][1]));
  }
}

// --amp, --clip-grad-norm and --model-ema against torchvision's train_one_epoch in Python (pytorch_reference.py
// features): CPU autocast to bfloat16, Python's GradScaler (its control flow; a step whose loss is inf is skipped and
// backs the scale off, 3 good steps grow it), clip_grad_norm_, and ExponentialMovingAverage over AveragedModel, 8
// steps from the same weights and batches (dropout from the same seed). Then Python's file {"model", "model_ema",
// "scaler"} loads into ddprun's objects: the weights, the average and the scaler's state are the same, bit for bit.
TEST(Features, AmpClipEmaTrainAsTorchvision) {
  const fs::path dir = temp_folder("ddprun_features");
  torch::manual_seed(3);
  auto model = make_model("mnist_cnn");
  ddprun::save_checkpoint((dir / "init.pth").string(), ddprun::TrainingState(*model), {0, 0});
  const auto expected = python_reference("features " + dir.string());
  ASSERT_EQ(expected.size(), 2u) << "python reference failed";

  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  ddprun::GradScalerOptions scaling;
  scaling.init_scale = 1024;
  scaling.growth_interval = 3;
  ddprun::GradScaler scaler(scaling);
  auto ema = std::make_shared<ddprun::ExponentialMovingAverage>(*model, make_model("mnist_cnn"), 0.9);
  model->train();
  torch::manual_seed(0);
  std::vector<double> stepped;
  for (int i = 0; i < 8; ++i) {
    const at::Tensor image = (at::arange(8 * 784, at::kFloat) * 0.01 + i).sin().view({8, 1, 28, 28});
    const at::Tensor target = (at::arange(8, at::kLong) + i).remainder(10);
    at::Tensor loss;
    {
      ddprun::Autocast autocast(c10::kCPU);
      loss = classification_loss(model->forward(image), target, 0);
    }
    if (i == 4) loss = loss * std::numeric_limits<double>::infinity();
    optimizer.zero_grad();
    scaler.scale(loss).backward();
    scaler.unscale_(optimizer);
    torch::nn::utils::clip_grad_norm_(model->parameters(), 0.5);
    if (scaler.step(optimizer)) stepped.push_back(i);
    scaler.update();
    if (i % 2 == 0) ema->update_parameters(*model);
  }
  EXPECT_EQ(stepped, expected[0]);
  EXPECT_EQ(scaler.get_scale(), expected[1][0]);
  EXPECT_EQ(scaler.state().growth_tracker, static_cast<int64_t>(expected[1][1]));

  auto python_model = make_model("mnist_cnn");
  auto python_ema = std::make_shared<ddprun::ExponentialMovingAverage>(*python_model, make_model("mnist_cnn"), 0.5);
  ddprun::GradScaler python_scaler;
  ddprun::load_checkpoint(
      (dir / "py.pth").string(),
      ddprun::TrainingState(*python_model).module("model_ema", *python_ema).grad_scaler(python_scaler));
  EXPECT_EQ(python_scaler.get_scale(), scaler.get_scale());
  EXPECT_EQ(python_scaler.state().growth_tracker, scaler.state().growth_tracker);
  EXPECT_EQ(python_ema->n_averaged().item<int64_t>(), 4);
  for (const auto& [ours, theirs] : {std::pair<torch::nn::Module*, torch::nn::Module*>{model.get(), python_model.get()},
                                     {ema.get(), python_ema.get()}}) {
    const auto mine = ours->named_parameters();
    for (const auto& item : theirs->named_parameters()) {
      SCOPED_TRACE(item.key());
      const double diff = (mine[item.key()] - item.value()).abs().max().item<double>();
      EXPECT_EQ(diff, 0.0);
    }
  }
  fs::remove_all(dir);
}

TEST(ModuleState, LoadsStrictlyAndSaysWhatDoesNotMatch) {
  auto a = make_model("mnist_cnn"), b = make_model("mnist_cnn");
  ddprun::checkpoint::load_module_state_dict(*b, ddprun::checkpoint::module_state_dict(*a));
  EXPECT_TRUE(b->named_parameters()["fc2.weight"].equal(a->named_parameters()["fc2.weight"]));

  auto state = ddprun::checkpoint::Value::ordered_dict();
  state.set("module.conv1.weight", torch::zeros({1}));
  state.set("other", torch::zeros({1}));
  try {
    ddprun::checkpoint::load_module_state_dict(*b, state);
    FAIL() << "mismatched state was accepted";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("missing conv1.weight, conv1.bias, conv2.weight, conv2.bias, fc1.weight and 3 more"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("unexpected module.conv1.weight, other"), std::string::npos) << message;
  }
  EXPECT_TRUE(b->named_parameters()["fc2.weight"].equal(a->named_parameters()["fc2.weight"]));

  // A state saved from a DDP-wrapped Python model ("module." on every key) loads as is.
  auto wrapped = ddprun::checkpoint::Value::ordered_dict();
  const auto plain = ddprun::checkpoint::module_state_dict(*a);
  for (const auto& [key, value] : plain.entries()) wrapped.set("module." + key.to_string(), value.to_tensor().clone());
  auto c = make_model("mnist_cnn");
  ddprun::checkpoint::load_module_state_dict(*c, wrapped);
  EXPECT_TRUE(c->named_parameters()["conv1.weight"].equal(a->named_parameters()["conv1.weight"]));
}

volatile std::sig_atomic_t received_signal = 0;

TEST(FaultInjection, FiresOnceOnItsRankAtTheNamedPoint) {
  std::signal(SIGUSR2, [](int s) { received_signal = s; });
  FaultInjection other_rank = FaultInjection::parse("USR2:1:0:eval", 0);
  EXPECT_FALSE(other_rank.armed());
  FaultInjection injection = FaultInjection::parse("SIGUSR2:0:1:3", 0);
  ASSERT_TRUE(injection.armed());
  injection.after_step(0, 3);  // another epoch
  injection.after_step(1, 2);  // another step
  injection.during_evaluation(1);
  EXPECT_EQ(received_signal, 0);
  injection.after_step(1, 3);
  EXPECT_EQ(received_signal, SIGUSR2);
  EXPECT_FALSE(injection.armed());
  EXPECT_TRUE(FaultInjection::parse("KILL:0:0:eval", 0).armed());
  EXPECT_FALSE(FaultInjection::parse("", 0).armed());
}

TEST(FaultInjection, RefusesWhatItCannotRead) {
  for (const char* bad :
       {"USR1", "USR1:0:0", "BOGUS:0:0:1", "USR1:x:0:1", "USR1:0:0:0", "USR1:0:-1:1", "USR1:0:0:later"}) {
    try {
      FaultInjection::parse(bad, 0);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()).rfind("DDPRUN_INJECT_SIGNAL '" + std::string(bad) + "'", 0), 0u) << e.what();
    }
  }
}
