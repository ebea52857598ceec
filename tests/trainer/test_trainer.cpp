// Unit tests of ddptrain's pieces: flags, IDX files, the distributed sampler (against Python's), SGD (against
// LibTorch's port of torch.optim.SGD), the optimizers and learning-rate schedules against Python's (to the last bit,
// and resumed from each other's state dicts both ways) and the models' state dicts.
#include "checkpoint/module_state.h"
#include "checkpoint/torch_file.h"
#include "ddprun/distributed_sampler.h"
#include "trainer/fault_injection.h"
#include "trainer/idx_dataset.h"
#include "trainer/lr_scheduler.h"
#include "trainer/models.h"
#include "trainer/options.h"
#include "trainer/preemption.h"
#include "trainer/sgd.h"

#include <gtest/gtest.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>
#include <unistd.h>
#include <zlib.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
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

// Output of tests/trainer/pytorch_reference.py, one vector of numbers per line.
std::vector<std::vector<double>> python_reference(const std::string& args) {
  const std::string command =
      "/usr/bin/python3 " + std::string(DDPRUN_SOURCE_DIR) + "/tests/trainer/pytorch_reference.py " + args;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  std::vector<std::vector<double>> lines;
  char buffer[1 << 16];
  while (pipe && fgets(buffer, sizeof buffer, pipe.get())) {
    std::istringstream in(buffer);
    lines.emplace_back();
    for (double v; in >> v;) lines.back().push_back(v);
  }
  return lines;
}

fs::path temp_folder(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("ddprun_test_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

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

TEST(DistributedSampler, MatchesPyTorchIndexForIndex) {
  for (auto [n, world, seed, epoch] : std::vector<std::tuple<int, int, int, int>>{
           {10, 3, 0, 0}, {101, 2, 1, 4}, {5, 4, 42, 1}, {2, 3, 7, 9}, {2, 5, 3, 0}}) {
    auto expected = python_reference("sampler " + std::to_string(n) + " " + std::to_string(world) + " " +
                                     std::to_string(seed) + " " + std::to_string(epoch));
    ASSERT_EQ(static_cast<int>(expected.size()), world) << "python reference failed";
    for (int rank = 0; rank < world; ++rank) {
      ddprun::DistributedSampler sampler(n, rank, world, /*shuffle=*/true, seed);
      sampler.set_epoch(epoch);
      at::Tensor got = sampler.indices();
      ASSERT_EQ(got.size(0), static_cast<int64_t>(expected[rank].size()));
      for (int64_t i = 0; i < got.size(0); ++i)
        EXPECT_EQ(got[i].item<int64_t>(), static_cast<int64_t>(expected[rank][i])) << "n=" << n << " rank=" << rank;
    }
  }
}

TEST(DistributedSampler, EpochsReshuffleAndRanksCoverEverySample) {
  ddprun::DistributedSampler a(1000, 0, 2, true, 3), b(1000, 1, 2, true, 3);
  at::Tensor all = at::cat({a.indices(), b.indices()});
  EXPECT_EQ(std::get<0>(at::_unique(all)).size(0), 1000);
  at::Tensor first = a.indices();
  a.set_epoch(1);
  EXPECT_FALSE(first.equal(a.indices()));
}

TEST(Sgd, ComputesWhatTorchOptimSgdComputes) {
  for (bool nesterov : {false, true}) {
    torch::manual_seed(0);
    at::Tensor w = torch::randn({4, 3}, torch::requires_grad()), w_ref = w.detach().clone().requires_grad_(true);
    SgdOptions options;
    options.lr = 0.1;
    options.momentum = 0.9;
    options.weight_decay = 0.01;
    options.nesterov = nesterov;
    Sgd ours({w}, options);
    torch::optim::SGD reference({w_ref},
                                torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(0.01).nesterov(nesterov));
    for (int step = 0; step < 5; ++step) {
      at::Tensor target = torch::randn({4, 3});
      ours.zero_grad();
      reference.zero_grad();
      (w * target).pow(2).sum().backward();
      (w_ref * target).pow(2).sum().backward();
      ours.step();
      reference.step();
      ASSERT_TRUE(w.allclose(w_ref, 1e-6, 1e-7)) << "nesterov=" << nesterov << " step " << step;
    }
  }
}

TEST(Sgd, StateDictHasPythonsLayoutAndRestores) {
  at::Tensor w = torch::ones({2, 2}, torch::requires_grad()), unused = torch::ones({3}, torch::requires_grad());
  SgdOptions options;
  options.lr = 0.5;
  options.momentum = 0.9;
  Sgd sgd({w, unused}, options);
  w.sum().backward();
  sgd.step();
  auto state = sgd.state_dict();
  const auto& group = state.at("param_groups").items().at(0);
  for (const char* key :
       {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable", "params"})
    EXPECT_NE(group.find(key), nullptr) << key;
  EXPECT_EQ(group.at("params").items().size(), 2u);
  EXPECT_TRUE(state.at("state").at(int64_t{0}).at("momentum_buffer").to_tensor().equal(torch::ones({2, 2})));
  EXPECT_EQ(state.at("state").find(int64_t{1}), nullptr);  // no gradient yet, so no state, as in Python

  at::Tensor w2 = w.detach().clone().requires_grad_(true);
  Sgd restored({w2, unused}, SgdOptions{});
  restored.load_state_dict(state);
  EXPECT_DOUBLE_EQ(restored.lr(), 0.5);
  EXPECT_DOUBLE_EQ(restored.options().momentum, 0.9);
  // The next step uses the restored momentum: both optimizers move their weights identically.
  for (auto* pair : {&sgd, &restored}) pair->zero_grad();
  (w * 3).sum().backward();
  (w2 * 3).sum().backward();
  sgd.step();
  restored.step();
  EXPECT_TRUE(w.equal(w2));
  EXPECT_FALSE(w.equal(torch::ones({2, 2}) - 0.5 - 0.5 * 3));  // not a first step: momentum was used
  Sgd wrong({w}, SgdOptions{});
  EXPECT_THROW(wrong.load_state_dict(state), std::runtime_error);
}

namespace {

struct OptimConfig {
  std::string opt, schedule;
  int warmup_epochs = 0;
  std::string warmup_method = "constant";
  int save_after = 0;  // the epoch after which each side writes its state for the other to resume from
};
constexpr int kOptimEpochs = 7;

// What tests/trainer/pytorch_reference.py's optim mode does on the Python side, here with ddptrain's classes: the
// epochs' rates and the final tensors, flattened.
struct Trajectory {
  std::vector<double> rates, params;
};

Trajectory run_optim(const OptimConfig& c, std::vector<at::Tensor> params, const ddprun::checkpoint::Value* resume,
                     const fs::path& save_to) {
  OptimizerOptions optimizer_options;
  optimizer_options.name = c.opt;
  optimizer_options.lr = 0.1;
  optimizer_options.momentum = 0.9;
  optimizer_options.weight_decay = 1e-4;
  auto optimizer = make_optimizer(params, optimizer_options);
  LrScheduleOptions schedule_options;
  schedule_options.name = c.schedule;
  schedule_options.epochs = kOptimEpochs;
  schedule_options.step_size = 2;
  schedule_options.gamma = 0.5;
  schedule_options.lr_min = 0.001;
  schedule_options.warmup_epochs = c.warmup_epochs;
  schedule_options.warmup_method = c.warmup_method;
  schedule_options.warmup_decay = 0.1;
  auto schedule = make_lr_schedule(*optimizer, schedule_options);
  int first_epoch = 0;
  if (resume) {
    optimizer->load_state_dict(resume->at("optimizer"));
    schedule->load_state_dict(resume->at("lr_scheduler"));
    first_epoch = static_cast<int>(resume->at("epoch").to_int()) + 1;
  }
  Trajectory out;
  for (int epoch = first_epoch; epoch < kOptimEpochs; ++epoch) {
    out.rates.push_back(optimizer->lr());
    for (int s = 0; s < 2; ++s) {
      const int t = 2 * epoch + s;
      for (at::Tensor& p : params) p.mutable_grad() = at::cos(p.detach() * static_cast<double>(t + 1)) + 0.1 * t;
      optimizer->step();
    }
    schedule->step();
    if (!save_to.empty() && epoch == c.save_after) {
      ddprun::checkpoint::Value list = ddprun::checkpoint::Value::list();
      for (const at::Tensor& p : params) list.append(p.detach().clone());
      ddprun::checkpoint::save(ddprun::checkpoint::Value::dict({{"params", list},
                                                                {"optimizer", optimizer->state_dict()},
                                                                {"lr_scheduler", schedule->state_dict()},
                                                                {"epoch", static_cast<int64_t>(epoch)}}),
                               save_to);
    }
  }
  at::Tensor flat = at::cat({params[0].detach().flatten(), params[1].detach().flatten()}).to(at::kDouble);
  out.params.assign(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
  return out;
}

std::vector<at::Tensor> optim_start_params() {
  return {torch::linspace(-1, 1, 12).view({3, 4}).requires_grad_(), torch::linspace(0.5, -0.5, 5).requires_grad_()};
}

std::string describe(const OptimConfig& c) {
  return c.opt + " " + c.schedule + " warm-up " + std::to_string(c.warmup_epochs) + " " + c.warmup_method;
}

}  // namespace

// --opt and --lr-scheduler compute what torch.optim computes, bit for bit, and a run resumed from either side's
// checkpoint (Python resuming ours, ddptrain resuming Python's) continues exactly as the uninterrupted run.
TEST(OptimizerAndSchedule, MatchPythonBitForBitAndResumeFromEachOthersState) {
  const fs::path dir = temp_folder("optim");
  const std::vector<OptimConfig> configs{{"sgd", "steplr", 0, "constant", 3},
                                         {"adamw", "cosineannealinglr", 2, "linear", 1},
                                         {"sgd_nesterov", "cosineannealinglr", 0, "constant", 4},
                                         {"adamw", "steplr", 3, "constant", 1}};
  for (const OptimConfig& c : configs) {
    SCOPED_TRACE(describe(c));
    const Trajectory full = run_optim(c, optim_start_params(), nullptr, dir / "cpp.pth");
    const auto python = python_reference("optim " + c.opt + " " + c.schedule + " " + std::to_string(c.warmup_epochs) +
                                         " " + c.warmup_method + " " + std::to_string(kOptimEpochs) + " " +
                                         std::to_string(c.save_after) + " " + dir.string());
    ASSERT_EQ(python.size(), 4u) << "python reference failed";
    EXPECT_EQ(full.rates, python[0]) << "learning rates differ from Python's";
    EXPECT_EQ(full.params, python[1]) << "weights differ from Python's";
    const std::vector<double> tail(full.rates.begin() + c.save_after + 1, full.rates.end());
    EXPECT_EQ(python[2], tail) << "Python resumed from our checkpoint and its rates went elsewhere";
    EXPECT_EQ(python[3], full.params) << "Python resumed from our checkpoint and its weights went elsewhere";

    const auto saved = ddprun::checkpoint::load(dir / "py.pth", c10::Device(c10::kCPU));
    std::vector<at::Tensor> params;
    for (const auto& p : saved.at("params").items()) params.push_back(p.to_tensor().clone().requires_grad_());
    const Trajectory resumed = run_optim(c, params, &saved, {});
    EXPECT_EQ(resumed.rates, tail) << "resumed from Python's checkpoint, the rates went elsewhere";
    EXPECT_EQ(resumed.params, full.params) << "resumed from Python's checkpoint, the weights went elsewhere";
  }
  fs::remove_all(dir);
}

TEST(OptimizerAndSchedule, RefuseAnotherOptimizersOrSchedulesState) {
  auto params = optim_start_params();
  OptimizerOptions adamw_options;
  adamw_options.name = "adamw";
  auto adamw = make_optimizer(params, adamw_options);
  auto sgd = make_optimizer(params, OptimizerOptions{});
  auto error = [](auto&& load) {
    try {
      load();
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error([&] { sgd->load_state_dict(adamw->state_dict()); }).find("not SGD's"), std::string::npos);
  EXPECT_NE(error([&] { adamw->load_state_dict(sgd->state_dict()); }).find("not AdamW's"), std::string::npos);
  auto fewer = make_optimizer({params[0]}, OptimizerOptions{});
  EXPECT_NE(error([&] { fewer->load_state_dict(sgd->state_dict()); }).find("for 2 parameters, the model has 1"),
            std::string::npos);

  LrScheduleOptions cosine;
  cosine.name = "cosineannealinglr";
  LrScheduleOptions warm = cosine;
  warm.warmup_epochs = 1;
  auto step_schedule = make_lr_schedule(*sgd, LrScheduleOptions{});
  auto cosine_schedule = make_lr_schedule(*sgd, cosine);
  auto warm_schedule = make_lr_schedule(*sgd, warm);
  EXPECT_NE(
      error([&] { cosine_schedule->load_state_dict(step_schedule->state_dict()); }).find("not a CosineAnnealingLR's"),
      std::string::npos);
  EXPECT_NE(error([&] { cosine_schedule->load_state_dict(warm_schedule->state_dict()); }).find("--lr-warmup-epochs"),
            std::string::npos);
  EXPECT_NE(error([&] { warm_schedule->load_state_dict(cosine_schedule->state_dict()); }).find("--lr-warmup-epochs"),
            std::string::npos);
  EXPECT_TRUE(sgd->state_dict().at("param_groups").items().at(0).find("initial_lr"));

  // A refused state leaves what was there: the warm-up's ConstantLR state fits, the main StepLR's does not.
  LrScheduleOptions warm_step;
  warm_step.warmup_epochs = 1;
  const auto before = warm_schedule->state_dict();
  const auto other = make_lr_schedule(*sgd, warm_step)->state_dict();
  EXPECT_NE(error([&] { warm_schedule->load_state_dict(other); }).find("not a CosineAnnealingLR's"), std::string::npos);
  EXPECT_TRUE(warm_schedule->state_dict() == before);

  OptimizerOptions nesterov_options;
  nesterov_options.name = "sgd_nesterov";
  auto nesterov = make_optimizer(params, nesterov_options);
  EXPECT_NE(error([&] { sgd->load_state_dict(nesterov->state_dict()); }).find("resume with --opt sgd_nesterov"),
            std::string::npos);
  auto adam_state = adamw->state_dict();  // PyTorch 2.x's Adam writes AdamW's keys and decoupled_weight_decay=False
  adam_state.entries()[1].second.items()[0].set("decoupled_weight_decay", false);
  const auto adamw_before = adamw->state_dict();
  EXPECT_NE(error([&] { adamw->load_state_dict(adam_state); }).find("Adam's"), std::string::npos);
  EXPECT_TRUE(adamw->state_dict() == adamw_before);
  EXPECT_THROW(make_optimizer(params, OptimizerOptions{"rmsprop"}), std::invalid_argument);
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

TEST(FaultInjection, FiresOnceOnItsRankAtTheNamedPoint) {
  watch_preemption_signals({SIGUSR2});
  FaultInjection other_rank = FaultInjection::parse("USR2:1:0:eval", 0);
  EXPECT_FALSE(other_rank.armed());
  FaultInjection injection = FaultInjection::parse("SIGUSR2:0:1:3", 0);
  ASSERT_TRUE(injection.armed());
  injection.after_step(0, 3);  // another epoch
  injection.after_step(1, 2);  // another step
  injection.during_evaluation(1);
  EXPECT_EQ(preemption_signal(), 0);
  injection.after_step(1, 3);
  EXPECT_EQ(preemption_signal(), SIGUSR2);
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
