// ddptrain's options: flags named as in torchvision's classification reference, read from the command line and
// optionally an INI file (--config), where flags win.
#pragma once

#include "ddprun/errors.h"

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ddprun::trainer {

struct TrainOptions {
  std::string data_path = "/usr/share/datasets/fashion-mnist";
  std::string model = "mnist_cnn";
  int epochs = 5;
  int batch_size = 64;  // per rank
  double lr = 0.05;
  std::string opt = "sgd";  // sgd, sgd_nesterov or adamw
  double momentum = 0.9;
  double weight_decay = 1e-4;
  std::string lr_scheduler = "steplr";  // steplr or cosineannealinglr
  int lr_step_size = 3;
  double lr_gamma = 0.1;
  double lr_min = 0;  // CosineAnnealingLR's eta_min
  int lr_warmup_epochs = 0;
  std::string lr_warmup_method = "constant";  // linear or constant, as torchvision's default
  double lr_warmup_decay = 0.01;
  double label_smoothing = 0;  // torchvision's --label-smoothing: CrossEntropyLoss(label_smoothing=...)
  bool test_only = false;      // evaluate the --resume checkpoint and exit
  bool amp = false;            // autocast forward + GradScaler
  double clip_grad_norm = 0;   // torchvision's --clip-grad-norm; 0: off
  bool sync_bn = false;        // torchvision's --sync-bn: BatchNorm statistics over every rank (resnet18)
  bool model_ema = false;      // torchvision's --model-ema
  int model_ema_steps = 32;
  double model_ema_decay = 0.99998;
  std::string output_dir = ".";
  std::string resume;                  // a checkpoint path, "auto" (the newest loadable one in output_dir), or empty
  int keep_last = 0;                   // per-epoch files model_<epoch>.pth kept (the newest ones); 0: all
  int save_every_steps = 0;            // also write checkpoint.pth every K steps within an epoch; 0: only per epoch
  bool async_save = false;             // rank 0 writes checkpoints from a background thread
  std::string on_save_error = "stop";  // stop or continue when a checkpoint cannot be written
  std::string nan_policy = "stop";     // a NaN/inf loss: stop (exit 4) or skip-step (skip that step's update)
  std::string map_location;            // FROM=TO[,FROM=TO...] for loaded storages; others go to the rank's device
  bool resume_broadcast = false;       // rank 0 reads the --resume file and broadcasts it
  int stop_after_steps = 0;            // train this many steps in this run, save and exit; 0: train to the end
  std::string preempt_signals = "USR1,USR2";  // signals that preempt: save at the next step boundary, exit 75
  int start_epoch = 0;
  int64_t seed = 1;
  int64_t train_limit = 0;  // 0: the whole split
  int64_t test_limit = 0;
  int threads = 0;                // intra-op threads per rank; 0: cores on the node / ranks on the node
  std::string backend = "auto";   // the collective backend: auto (NCCL on GPUs, else MPI), mpi or nccl
  double comm_timeout = -1;       // seconds a collective may take before the job is aborted; 0: no limit;
                                  // -1: DDPRUN_COMM_TIMEOUT, else 300
  bool comm_check = false;        // compare tensor sizes across ranks before every collective
  std::string grad_sync = "ddp";  // ddp (the bucketed engine) or per-param (the baseline benchmarks compare with)
  double bucket_cap_mb = 25;      // DDP: gradient bucket size (the first bucket is 1 MiB)
  int accum_steps = 1;            // backward passes per optimizer step (all-reduce only on the last)
  bool find_unused_parameters = false;
  std::string grad_compression = "none";  // the all-reduce's dtype on the wire: none, fp16 or bf16
  std::string timeline;                   // a Chrome trace of rank 0's steps, or empty
  std::string config;
};

// A bad flag, value or config file: ddprun::UsageError (exit code 2), one line that names the flag and says what to do.
using ddprun::UsageError;

struct ParseResult {
  TrainOptions options;
  bool help_requested = false;
  std::string help_text;
};

// The largest --config file read (it is a list of name = value lines).
constexpr size_t kMaxConfigBytes = size_t{1} << 20;

// Throws UsageError for unknown flags, malformed values, values out of range (NaN and inf included) and --config
// paths that are not a readable regular file of at most kMaxConfigBytes.
ParseResult parse_options(int argc, const char* const argv[]);

// The model names --model accepts, and the optimizers --opt does.
const std::vector<std::string>& known_models();
const std::vector<std::string>& known_optimizers();

}  // namespace ddprun::trainer
