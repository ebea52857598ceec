// Checkpoints in the format of Python's torch.save, with the dict torchvision's reference scripts write:
// {"model": the module's state_dict (no DDP prefix), "optimizer": torch.optim's state_dict layout, "lr_scheduler",
// "epoch": the last finished epoch}, which torch.load(..., weights_only=True) opens; and the other way round, files
// Python wrote load into LibTorch objects. Files are written atomically (a temporary file, fsync, rename).
//
// save_checkpoint/load_checkpoint work on one process. CheckpointManager is what a distributed job uses: rank 0
// writes, every rank loads onto its own device, every rank's random state is kept, and --resume auto picks the newest
// file that loads.
#pragma once

#include "ddprun/lr_scheduler.h"
#include "ddprun/process_group.h"

#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <memory>
#include <string>

namespace ddprun {

// What a checkpoint holds. The model is needed; the others are saved and loaded when given.
struct TrainingState {
  torch::nn::Module* model = nullptr;
  torch::optim::Optimizer* optimizer = nullptr;  // torch::optim::SGD, Adam or AdamW
  LrScheduler* lr_scheduler = nullptr;
};

// Where training continues: `step` batches into `epoch` (0: at its start).
struct ResumePoint {
  int64_t epoch = 0;
  int64_t step = 0;
};

// Writes `state` to `path` (its "epoch" entry is at.epoch - 1, the last finished one, as train.py reads it).
// Throws std::runtime_error naming the path and what failed; the previous file stays intact.
void save_checkpoint(const std::string& path, const TrainingState& state, ResumePoint at);

// Loads `path` into `state`, each storage onto `map_location` (as torch.load's map_location), strictly: a model
// whose names or shapes differ, or another optimizer's state, throws std::runtime_error listing what does not fit
// (the model is left as it was when its state does not fit; the optimizer when its state does not). Returns where
// to continue (a file from Python: the epoch after its "epoch", step 0). Adam's and AdamW's states have one layout,
// in Python as here, so one loads into the other; SGD's and Adam's do not.
ResumePoint load_checkpoint(const std::string& path, const TrainingState& state,
                            c10::Device map_location = c10::Device(c10::kCPU));

struct CheckpointOptions {
  std::string directory = ".";  // checkpoint.pth (the newest) and model_<epoch>.pth after each epoch
  int keep_last = 0;            // keep only the newest N model_<epoch>.pth (0: all)
};

class CheckpointManager {
 public:
  CheckpointManager(ProcessGroup& group, TrainingState state, CheckpointOptions options);
  ~CheckpointManager();
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  // On every rank: the newest checkpoint in the directory that loads on every rank (checkpoint.pth, then the epoch
  // files from the highest down; each newer one that fails is named in a warning), loaded onto each rank's device
  // with its random generators put back as they were when it was saved, so training continues exactly. {0, 0}
  // when the directory holds none yet. Throws std::runtime_error on every rank when none of them loads.
  ResumePoint resume_auto();
  // The same from one file.
  ResumePoint resume(const std::string& path);

  // On every rank, at a step boundary: rank 0 writes checkpoint.pth (and, at an epoch's end, when at.step is 0,
  // model_<at.epoch - 1>.pth) with every rank's random state; every rank learns whether it worked (std::runtime_error
  // on every rank if not; the previous checkpoint stays intact).
  void save(ResumePoint at);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ddprun
