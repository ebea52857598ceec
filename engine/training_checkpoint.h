// The training checkpoint's layout, written and read in this one place (ddptrain and the library both go through
// it): torchvision's dict {"model", "optimizer", "lr_scheduler", "epoch", "args"}, always all five (an empty dict
// for what a program does not have), then the program's own named entries, then the "ddprun" entry an exact resume
// needs (Python's scripts ignore it):
//   {"format_version": 1, "world_size", "batch_size", "step_in_epoch",
//    "sampler": {"seed", "epoch", "position", "shuffle"}, "rank_states": [{"cpu_rng_state", "device_rng_state",
//    <the rank's numbers>}, ...]}
// ("batch_size" and "sampler" only when the program registered its sampler). A mid-epoch file's "epoch" is the epoch
// before, so that torchvision's train.py redoes the unfinished epoch. Every number read is range-checked.
#pragma once

#include "checkpoint/value.h"
#include "engine/learning_rate.h"
#include "engine/lr_schedule.h"
#include "engine/rank_state.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ddprun::engine {

// The layout of the "ddprun" entry; a checkpoint from a newer layout is refused rather than misread.
constexpr int64_t kTrainingCheckpointFormat = 1;
// The largest world a checkpoint can come from.
constexpr int64_t kMaxWorldSize = int64_t{1} << 20;

// One named entry: how to write it, and how to read it back: `read` checks the saved value (throwing
// std::runtime_error that names what does not fit) and returns the change to make, which runs only once every entry
// was read, so that a checkpoint that does not fit leaves everything as it was. No `read`: written only ("args").
struct Entry {
  std::string key;
  std::function<checkpoint::Value()> write;
  std::function<std::function<void()>(const checkpoint::Value& saved)> read;
};

// The entries a program's objects make.
Entry module_entry(const std::string& key, torch::nn::Module& module);
// A torch::optim optimizer; `rate`, when it returns one, is the schedule's rate of it, which keeps initial_lr.
Entry optimizer_entry(const std::string& key, torch::optim::Optimizer& optimizer, std::function<LearningRate*()> rate);
Entry schedule_entry(const std::string& key, LrSchedule& schedule);
Entry tensor_entry(const std::string& key, at::Tensor& tensor);
Entry number_entry(const std::string& key, double& value);
Entry number_entry(const std::string& key, int64_t& value);
Entry text_entry(const std::string& key, std::string& value);
Entry args_entry(std::function<checkpoint::Value()> args);

// The data order's position a checkpoint records (DistributedSampler's).
struct SamplerState {
  int64_t dataset_size = 0;
  int64_t seed = 0;
  bool shuffle = true;
  int64_t batch_size = 0;  // per rank and step: step x batch_size samples of a rank's share are done
};

// Where a checkpoint is in training: `step` batches into `epoch` (0: its start).
struct Position {
  int64_t epoch = 0;
  int64_t step = 0;
};

// The checkpoint's dict. `ranks`: every rank's state, in rank order.
checkpoint::Value write_training_checkpoint(const std::vector<Entry>& entries, Position at, int world_size,
                                            const std::optional<SamplerState>& sampler,
                                            const std::vector<RankState>& ranks);

// What a resume continues with.
struct Resume {
  Position at;
  std::optional<RankState> rank_state;  // this rank's, when the job runs on the world (and batch size) that saved it
  std::string note;                     // what a different world or batch size changed ("" when nothing did)
  std::function<void()> apply;          // loads every entry (call it once all ranks agree the file is good)
};

// Reads `saved` (the dict of a file torch.save or write_training_checkpoint wrote) for a job of `world_size` ranks
// in which this is `rank`: checks every entry and every number, and returns where to continue; nothing changes
// until Resume::apply runs. Throws std::runtime_error naming the first thing that does not fit.
Resume read_training_checkpoint(const checkpoint::Value& saved, const std::vector<Entry>& entries, int world_size,
                                int rank, const std::optional<SamplerState>& sampler);

}  // namespace ddprun::engine
