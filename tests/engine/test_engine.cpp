// Unit tests of the engine: the sample order against Python's DistributedSampler; torch::optim's SGD and AdamW with
// the engine's learning-rate schedules against Python's torch.optim (to the last bit, and resumed from each other's
// state dicts both ways, through the optimizer-state conversion); refusals of another optimizer's or schedule's
// state; the training checkpoint's reader (every entry checked before anything changes).
#include "checkpoint/torch_file.h"
#include "engine/learning_rate.h"
#include "engine/lr_schedule.h"
#include "engine/optimizer_state.h"
#include "engine/rank_state.h"
#include "engine/sample_order.h"
#include "engine/training_checkpoint.h"
#include "tests/test_helpers.h"

#include <ATen/ops/_unique.h>
#include <ATen/ops/cat.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <tuple>

namespace {

using namespace ddprun::engine;
using ddprun::checkpoint::Value;
namespace fs = std::filesystem;

using ddprun::test_support::python_reference;
using ddprun::test_support::temp_folder;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

TEST(SampleOrder, MatchesPyTorchIndexForIndex) {
  for (auto [n, world, seed, epoch] : std::vector<std::tuple<int, int, int, int>>{
           {10, 3, 0, 0}, {101, 2, 1, 4}, {5, 4, 42, 1}, {2, 3, 7, 9}, {2, 5, 3, 0}}) {
    auto expected = python_reference("sampler " + std::to_string(n) + " " + std::to_string(world) + " " +
                                     std::to_string(seed) + " " + std::to_string(epoch));
    ASSERT_EQ(static_cast<int>(expected.size()), world) << "python reference failed";
    for (int rank = 0; rank < world; ++rank) {
      const at::Tensor got = sample_order(n, rank, world, /*shuffle=*/true, seed, epoch);
      ASSERT_EQ(got.size(0), static_cast<int64_t>(expected[rank].size()));
      for (int64_t i = 0; i < got.size(0); ++i)
        EXPECT_EQ(got[i].item<int64_t>(), static_cast<int64_t>(expected[rank][i])) << "n=" << n << " rank=" << rank;
    }
  }
}

TEST(SampleOrder, EpochsReshuffleAndRanksCoverEverySample) {
  const at::Tensor all = at::cat({sample_order(1000, 0, 2, true, 3, 0), sample_order(1000, 1, 2, true, 3, 0)});
  EXPECT_EQ(std::get<0>(at::_unique(all)).size(0), 1000);
  EXPECT_FALSE(sample_order(1000, 0, 2, true, 3, 0).equal(sample_order(1000, 0, 2, true, 3, 1)));
}

struct OptimConfig {
  std::string opt, schedule;
  int warmup_epochs = 0;
  std::string warmup_method = "constant";
  int save_after = 0;  // the epoch after which each side writes its state for the other to resume from
};
constexpr int kOptimEpochs = 7;

// What tests/trainer/pytorch_reference.py's optim mode does on the Python side, here with torch::optim and the
// engine's schedules (what ddptrain and ddprun::LrScheduler use): the epochs' rates and the final tensors.
struct Trajectory {
  std::vector<double> rates, params;
};

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name, std::vector<at::Tensor> params) {
  if (name == "adamw")
    return std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(0.1).weight_decay(1e-4));
  return std::make_unique<torch::optim::SGD>(
      params, torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-4).nesterov(name == "sgd_nesterov"));
}

LrScheduleOptions schedule_options(const OptimConfig& c) {
  LrScheduleOptions o;
  o.name = c.schedule;
  o.epochs = kOptimEpochs;
  o.step_size = 2;
  o.gamma = 0.5;
  o.lr_min = 0.001;
  o.warmup_epochs = c.warmup_epochs;
  o.warmup_method = c.warmup_method;
  o.warmup_decay = 0.1;
  return o;
}

Trajectory run_optim(const OptimConfig& c, std::vector<at::Tensor> params, const Value* resume,
                     const fs::path& save_to) {
  auto optimizer = make_optimizer(c.opt, params);
  TorchOptimizerRate rate(*optimizer);
  auto schedule = make_lr_schedule(rate, schedule_options(c));
  int first_epoch = 0;
  if (resume) {
    if (auto initial = load_optimizer_state_dict(*optimizer, resume->at("optimizer"))) rate.set_initial_lr(*initial);
    schedule->load_state_dict(resume->at("lr_scheduler"));
    first_epoch = static_cast<int>(resume->at("epoch").to_int()) + 1;
  }
  Trajectory out;
  for (int epoch = first_epoch; epoch < kOptimEpochs; ++epoch) {
    out.rates.push_back(rate.lr());
    for (int s = 0; s < 2; ++s) {
      const int t = 2 * epoch + s;
      for (at::Tensor& p : params) p.mutable_grad() = at::cos(p.detach() * static_cast<double>(t + 1)) + 0.1 * t;
      optimizer->step();
    }
    schedule->step();
    if (!save_to.empty() && epoch == c.save_after) {
      Value list = Value::list();
      for (const at::Tensor& p : params) list.append(p.detach().clone());
      ddprun::checkpoint::save(Value::dict({{"params", list},
                                            {"optimizer", optimizer_state_dict(*optimizer, rate.initial_lr())},
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

// torch::optim's SGD (Nesterov too) and AdamW with the engine's schedules compute what Python's torch.optim computes,
// bit for bit, and a run resumed from either side's checkpoint (Python resuming ours, ours resuming Python's)
// continues exactly as the uninterrupted run.
TEST(OptimizerAndSchedule, MatchPythonBitForBitAndResumeFromEachOthersState) {
  const fs::path dir = temp_folder("optim");
  const std::vector<OptimConfig> configs{{"sgd", "steplr", 0, "constant", 3},
                                         {"adamw", "cosineannealinglr", 2, "linear", 1},
                                         {"sgd_nesterov", "cosineannealinglr", 0, "constant", 4},
                                         {"adamw", "steplr", 3, "constant", 1}};
  for (const OptimConfig& c : configs) {
    SCOPED_TRACE(c.opt + " " + c.schedule + " warm-up " + std::to_string(c.warmup_epochs) + " " + c.warmup_method);
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
  auto adamw = make_optimizer("adamw", params);
  auto sgd = make_optimizer("sgd", params);
  EXPECT_NE(
      error_of([&] { load_optimizer_state_dict(*sgd, optimizer_state_dict(*adamw, std::nullopt)); }).find("not SGD's"),
      std::string::npos);
  EXPECT_NE(error_of([&] {
              load_optimizer_state_dict(*adamw, optimizer_state_dict(*sgd, std::nullopt));
            }).find("not AdamW's"),
            std::string::npos);
  auto fewer = make_optimizer("sgd", {params[0]});
  EXPECT_NE(error_of([&] {
              load_optimizer_state_dict(*fewer, optimizer_state_dict(*sgd, std::nullopt));
            }).find("parameter group 0 has 2 parameters"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_optimizer_state_dict(*sgd, Value::dict()); }).find("not a torch.optim state_dict"),
            std::string::npos);

  TorchOptimizerRate rate(*sgd);
  OptimConfig cosine{"sgd", "cosineannealinglr"}, warm{"sgd", "cosineannealinglr", 1}, steplr{"sgd", "steplr"};
  auto step_schedule = make_lr_schedule(rate, schedule_options(steplr));
  auto cosine_schedule = make_lr_schedule(rate, schedule_options(cosine));
  auto warm_schedule = make_lr_schedule(rate, schedule_options(warm));
  EXPECT_NE(error_of([&] {
              cosine_schedule->load_state_dict(step_schedule->state_dict());
            }).find("not a CosineAnnealingLR's"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              cosine_schedule->load_state_dict(warm_schedule->state_dict());
            }).find("resume with the warm-up it was saved with"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              warm_schedule->load_state_dict(cosine_schedule->state_dict());
            }).find("resume with the warm-up it was saved with"),
            std::string::npos);
  EXPECT_TRUE(rate.initial_lr().has_value());

  // A refused state leaves what was there: the warm-up's ConstantLR state fits, the main StepLR's does not.
  OptimConfig warm_step{"sgd", "steplr", 1};
  const auto before = warm_schedule->state_dict();
  const auto other = make_lr_schedule(rate, schedule_options(warm_step))->state_dict();
  EXPECT_NE(error_of([&] { warm_schedule->load_state_dict(other); }).find("not a CosineAnnealingLR's"),
            std::string::npos);
  EXPECT_TRUE(warm_schedule->state_dict() == before);

  auto nesterov = make_optimizer("sgd_nesterov", params);
  const Value sgd_before = optimizer_state_dict(*sgd, std::nullopt);
  EXPECT_NO_THROW(load_optimizer_state_dict(*sgd, optimizer_state_dict(*nesterov, std::nullopt)));  // as Python
  // PyTorch 2.x's Adam writes AdamW's keys and decoupled_weight_decay=False.
  auto adam_state = optimizer_state_dict(*adamw, std::nullopt);
  adam_state.entries()[1].second.items()[0].set("decoupled_weight_decay", false);
  const auto adamw_before = optimizer_state_dict(*adamw, std::nullopt);
  EXPECT_NE(error_of([&] { load_optimizer_state_dict(*adamw, adam_state); }).find("Adam's"), std::string::npos);
  EXPECT_TRUE(optimizer_state_dict(*adamw, std::nullopt) == adamw_before);
  EXPECT_THROW(make_lr_schedule(rate, LrScheduleOptions{"rmsprop"}), std::invalid_argument);
}

// The reader checks every entry before any changes: a checkpoint whose optimizer state does not fit leaves the
// model's weights as they were, and numbers out of range are refused with their name.
TEST(TrainingCheckpoint, ChecksEverythingBeforeAnythingChanges) {
  torch::manual_seed(0);
  torch::nn::Linear model(4, 2), other(4, 2);
  auto sgd = make_optimizer("sgd", model->parameters());
  std::vector<Entry> entries{module_entry("model", *model),
                             optimizer_entry("optimizer", *sgd, [] { return static_cast<LearningRate*>(nullptr); })};
  const std::vector<RankState> ranks{capture_rank_state(c10::Device(c10::kCPU), {})};
  const Value saved = write_training_checkpoint({module_entry("model", *other)}, {3, 0}, 1, std::nullopt, ranks);
  EXPECT_EQ(saved.at("epoch").to_int(), 2);
  EXPECT_TRUE(saved.at("optimizer").entries().empty());  // torchvision's keys are always there
  EXPECT_TRUE(saved.at("lr_scheduler").entries().empty());
  EXPECT_TRUE(saved.at("args").entries().empty());
  const at::Tensor before = model->weight.detach().clone();
  EXPECT_NE(error_of([&] {
              read_training_checkpoint(saved, entries, 1, 0, std::nullopt);
            }).find("its 'optimizer' entry is empty: the program that saved it had no optimizer"),
            std::string::npos);
  EXPECT_TRUE(model->weight.equal(before));  // the model entry was fine, and still not applied
  std::vector<Entry> model_only{module_entry("model", *model)};
  Resume resume = read_training_checkpoint(saved, model_only, 1, 0, std::nullopt);
  EXPECT_TRUE(model->weight.equal(before));
  resume.apply();
  EXPECT_TRUE(model->weight.equal(other->weight));
  EXPECT_EQ(resume.at.epoch, 3);
  Value bad = write_training_checkpoint(model_only, {3, 0}, 1, std::nullopt, ranks);
  bad.set("epoch", int64_t{1} << 32);
  EXPECT_NE(error_of([&] {
              read_training_checkpoint(bad, model_only, 1, 0, std::nullopt);
            }).find("its 'epoch' (the last finished one) is 4294967296"),
            std::string::npos);
}

}  // namespace
