// Checkpoints in the format of Python's torch.save, with the dict torchvision's reference scripts write:
// {"model": the module's state_dict (no DDP prefix), "optimizer": torch.optim's state_dict layout, "lr_scheduler",
// "epoch": the last finished epoch, "args": the flags}, always all five (an empty dict for what a program does not
// have), plus any entries you name; torch.load(..., weights_only=True) opens them, and files Python wrote load back
// into LibTorch objects. Files are written atomically (a temporary file, fsync, rename).
//
// TrainingState names what a checkpoint holds; CheckpointManager is what a distributed job uses: rank 0 writes, every
// rank loads onto its own device, every rank's random state is kept, resume_auto() picks the newest file that loads.
// save_checkpoint/load_checkpoint work on one process.
#pragma once

#include "ddprun/distributed_sampler.h"
#include "ddprun/lr_scheduler.h"
#include "ddprun/mixed_precision.h"
#include "ddprun/process_group.h"

#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>

namespace ddprun {

// Where training continues: `step` batches into `epoch` (0: at its start).
struct ResumePoint {
  int64_t epoch = 0;
  int64_t step = 0;
  // Set by a resume: every rank's random generators and rank numbers are back as they were when the file was
  // saved (the same number of ranks and batch size), so training continues bit for bit.
  bool exact = false;
};

// Throws UsageError naming the part of a map_location ("cuda:1=cuda:0,cpu=cpu") that is not FROM=TO of devices.
void check_map_location(const std::string& mapping);

// A flag's value in "args" (torchvision's args namespace, saved as a plain dict for Python).
using ArgValue = std::variant<bool, int64_t, double, std::string>;

// What a checkpoint holds, by name, as references to your objects (keep them alive while the state is in use):
// saving writes them, loading restores every one of them, strictly (a model whose names or shapes differ, another
// optimizer's state, a missing entry: UsageError or SetUpError listing what does not fit, and nothing is changed).
//   ddprun::TrainingState state(*net);
//   state.optimizer(optimizer).lr_scheduler(scheduler).arg("lr", 0.1).module("model_ema", *ema);
class TrainingState {
 public:
  explicit TrainingState(torch::nn::Module& model);  // "model"

  TrainingState& optimizer(torch::optim::Optimizer& optimizer);  // "optimizer": torch::optim SGD, Adam or AdamW
  TrainingState& lr_scheduler(LrScheduler& scheduler);           // "lr_scheduler"
  TrainingState& arg(const std::string& name, ArgValue value);   // args[name]: saved for Python, not loaded back

  // More entries, by name: a second model ("model_ema", a GAN's "discriminator"), its optimizer and schedule,
  // tensors, numbers and strings. The torchvision keys and "ddprun" are not names of your own.
  TrainingState& module(const std::string& key, torch::nn::Module& module);
  TrainingState& optimizer(const std::string& key, torch::optim::Optimizer& optimizer);
  TrainingState& lr_scheduler(const std::string& key, LrScheduler& scheduler);
  TrainingState& tensor(const std::string& key, torch::Tensor& tensor);
  TrainingState& number(const std::string& key, double& value);
  TrainingState& number(const std::string& key, int64_t& value);
  TrainingState& text(const std::string& key, std::string& value);
  // "scaler": Python's GradScaler state dict (an empty dict when the scaler is disabled, as Python writes it; an
  // empty one loads as a fresh scaler).
  TrainingState& grad_scaler(GradScaler& scaler);

  // The data order's position (the sampler's seed and epoch; ResumePoint::step x batch_size samples per rank), so
  // that a resume on another number of ranks or batch size continues after the same number of samples.
  TrainingState& sampler(const DistributedSampler& sampler, int64_t batch_size);
  // A number each rank keeps for itself (its share of an epoch's loss so far): saved per rank, and each rank gets its
  // own back when the job resumes on as many ranks.
  TrainingState& rank_number(const std::string& key, double& value);
  TrainingState& rank_number(const std::string& key, int64_t& value);

 private:
  struct Impl;
  friend struct LibraryAccess;
  std::shared_ptr<Impl> impl_;  // copies name the same objects
};

// Writes `state` to `path` (its "epoch" entry is at.epoch - 1, the last finished one, as train.py reads it).
// Throws ddprun::Error naming the path and what failed; the previous file stays intact.
void save_checkpoint(const std::string& path, const TrainingState& state, ResumePoint at);

// Loads `path` into `state`, each storage onto `map_location` (as torch.load's map_location). Returns where to
// continue (a file from Python: the epoch after its "epoch", step 0).
ResumePoint load_checkpoint(const std::string& path, const TrainingState& state,
                            c10::Device map_location = c10::Device(c10::kCPU));

enum class OnSaveError {
  Throw,  // save() throws on every rank (the previous checkpoint stays intact)
  Warn,   // rank 0 warns and training goes on; a job that never got a checkpoint written still fails at the end
};

struct CheckpointOptions {
  CheckpointOptions(std::string directory = ".") : directory(std::move(directory)) {}  // NOLINT: a folder is enough

  std::string directory;    // checkpoint.pth (the newest) and model_<epoch>.pth after each epoch
  int keep_last = 0;        // keep only the newest N model_<epoch>.pth (0: all)
  bool async_save = false;  // rank 0 copies the state to host memory and writes it on a thread of its own
  OnSaveError on_save_error = OnSaveError::Throw;
  std::string map_location;    // "FROM=TO[,FROM=TO...]" (cuda:1=cuda:0); the rest go to the rank's own device
  bool read_on_rank0 = false;  // rank 0 reads a checkpoint and broadcasts its bytes (file systems that suffer when
                               // many ranks open one file)
  bool check_replicas = true;  // at each save, compare a checksum of every rank's parameters: ranks whose weights
                               // differ (a model trained outside DistributedDataParallel) stop with the first one
  // How messages name the directory, the resume of a file and of the newest file (a program can name its flags).
  std::string directory_name = "CheckpointOptions::directory";
  std::string resume_name = "CheckpointManager::resume()";
  std::string resume_auto_name = "CheckpointManager::resume_auto()";
  std::string read_on_rank0_name = "CheckpointOptions::read_on_rank0";
};

class CheckpointManager {
 public:
  // On every rank: rank 0 creates the directory, checks that it can write there, and removes the partial files of
  // writes that were cut short (their writer is gone); unless read_on_rank0, every rank checks that it sees the
  // folder rank 0 writes to (a node-local path given by mistake would resume each node from its own files).
  // SetUpError on every rank when any of it fails.
  CheckpointManager(ProcessGroup& group, TrainingState state, CheckpointOptions options = {});
  ~CheckpointManager();  // waits for a background save
  CheckpointManager(const CheckpointManager&) = delete;
  CheckpointManager& operator=(const CheckpointManager&) = delete;

  // On every rank: the newest checkpoint in the directory that loads on every rank (checkpoint.pth, then the epoch
  // files from the highest down; each newer one that fails is named in a warning), loaded onto each rank's device
  // with its random generators put back as they were when it was saved, so training continues exactly. {0, 0}
  // when the directory holds none yet. Throws SetUpError on every rank when none of them loads.
  ResumePoint resume_auto();
  // The same from one file.
  ResumePoint resume(const std::string& path);

  // On every rank, at a step boundary: rank 0 writes checkpoint.pth (and, at an epoch's end, when at.step is 0,
  // model_<at.epoch - 1>.pth) with every rank's random state; every rank learns whether it worked (an Error on every
  // rank if not, unless OnSaveError::Warn; the previous checkpoint stays intact). Calling it on some ranks only (the
  // save_on_master habit) stops every rank within seconds with a line that says so.
  void save(ResumePoint at);
  // On every rank, at the end of training: waits for a background save (async_save) and reports it as save() would;
  // with OnSaveError::Warn, throws when not one checkpoint could be written and none was there before.
  void wait();

  // The file resume() or resume_auto() loaded ("" if none).
  const std::string& resumed_from() const;
  // Rank 0: whether the directory holds a checkpoint (from this job or before); false on the other ranks.
  bool has_checkpoint() const;
  // Rank 0: whether the latest save failed (OnSaveError::Warn).
  bool last_save_failed() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ddprun
