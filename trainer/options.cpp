// Parses ddptrain's flags and --config INI files with Boost.Program_options and checks every value's range.
#include "trainer/options.h"

#include "common/small_file.h"
#include "ddprun/checkpoint.h"
#include "ddprun/launch_contract.h"
#include "ddprun/lr_scheduler.h"
#include "ddprun/preemption_guard.h"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace po = boost::program_options;

namespace ddprun::trainer {

const std::vector<std::string>& known_models() {
  static const std::vector<std::string> names{"mnist_cnn", "mlp", "resnet18"};
  return names;
}

const std::vector<std::string>& known_optimizers() {
  static const std::vector<std::string> names{"sgd", "sgd_nesterov", "adamw"};
  return names;
}

namespace {

po::options_description describe(TrainOptions& o) {
  po::options_description desc("ddptrain: the per-rank trainer (start it with ddprun or mpirun, one rank per device)");
  // clang-format off
  desc.add_options()
    ("help,h", "print this help and exit")
    ("config", po::value(&o.config), "an INI file with any of these options as name = value; flags win over it")
    ("data-path", po::value(&o.data_path)->default_value(o.data_path),
     "folder with the MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...)")
    ("model", po::value(&o.model)->default_value(o.model), "the network: mnist_cnn, mlp (20 M parameters) or resnet18 (torchvision's)")
    ("epochs", po::value(&o.epochs)->default_value(o.epochs), "number of epochs to train (epochs count from 0)")
    ("batch-size,b", po::value(&o.batch_size)->default_value(o.batch_size), "images per rank per step")
    ("lr", po::value(&o.lr)->default_value(o.lr, "0.05"), "initial learning rate")
    ("opt", po::value(&o.opt)->default_value(o.opt),
     "the optimizer: sgd, sgd_nesterov or adamw (AdamW with PyTorch's default betas and eps)")
    ("momentum", po::value(&o.momentum)->default_value(o.momentum, "0.9"), "SGD momentum")
    ("weight-decay", po::value(&o.weight_decay)->default_value(o.weight_decay, "0.0001"),
     "weight decay (SGD: L2 added to the gradient; AdamW: decoupled)")
    ("wd", po::value<double>(), "the same as --weight-decay")
    ("lr-scheduler", po::value(&o.lr_scheduler)->default_value(o.lr_scheduler),
     "the learning-rate schedule, stepped after each epoch: steplr or cosineannealinglr")
    ("lr-step-size", po::value(&o.lr_step_size)->default_value(o.lr_step_size),
     "StepLR: multiply the learning rate by --lr-gamma every this many epochs")
    ("lr-gamma", po::value(&o.lr_gamma)->default_value(o.lr_gamma, "0.1"), "StepLR: the factor")
    ("lr-min", po::value(&o.lr_min)->default_value(o.lr_min, "0"),
     "CosineAnnealingLR: the rate it ends at (eta_min); it anneals over --epochs minus the warm-up")
    ("lr-warmup-epochs", po::value(&o.lr_warmup_epochs)->default_value(o.lr_warmup_epochs),
     "epochs of warm-up before the schedule (SequentialLR, as torchvision does it)")
    ("lr-warmup-method", po::value(&o.lr_warmup_method)->default_value(o.lr_warmup_method),
     "the warm-up: linear (LinearLR from --lr-warmup-decay x lr to lr) or constant (ConstantLR at --lr-warmup-decay x lr)")
    ("lr-warmup-decay", po::value(&o.lr_warmup_decay)->default_value(o.lr_warmup_decay, "0.01"),
     "the warm-up's starting factor of the learning rate")
    ("output-dir", po::value(&o.output_dir)->default_value(o.output_dir),
     "where rank 0 writes checkpoint.pth, model_<epoch>.pth and metrics.jsonl")
    ("label-smoothing", po::value(&o.label_smoothing)->default_value(o.label_smoothing, "0"),
     "label smoothing of the loss, from 0 to below 1, as torchvision's CrossEntropyLoss(label_smoothing=...)")
    ("amp", po::bool_switch(&o.amp)->default_value(false),
     "mixed precision: the forward pass under autocast (bfloat16 on CPU, float16 on CUDA) and a GradScaler (Python's "
     "schedule; its state is the checkpoint's \"scaler\")")
    ("clip-grad-norm", po::value(&o.clip_grad_norm)->default_value(o.clip_grad_norm, "0"),
     "clip the averaged gradients' global 2-norm to this (after unscaling with --amp); 0: no clipping")
    ("sync-bn", po::bool_switch(&o.sync_bn)->default_value(false),
     "SyncBatchNorm: resnet18's BatchNorm layers normalize with the statistics of the global batch (every rank's "
     "samples), forward and backward")
    ("model-ema", po::bool_switch(&o.model_ema)->default_value(false),
     "keep an exponential moving average of the weights (torchvision's ExponentialMovingAverage), evaluate it "
     "(test_acc1_ema) and save it as the checkpoint's \"model_ema\"")
    ("model-ema-steps", po::value(&o.model_ema_steps)->default_value(o.model_ema_steps),
     "update the average every N steps")
    ("model-ema-decay", po::value(&o.model_ema_decay)->default_value(o.model_ema_decay, "0.99998"),
     "the average's decay per sample, adjusted as torchvision does for world size, batch size, N and --epochs")
    ("test-only", po::bool_switch(&o.test_only)->default_value(false),
     "evaluate the --resume checkpoint on the test split (test_acc1, test_acc5), print it and exit")
    ("resume", po::value(&o.resume),
     "a checkpoint to continue from (every rank loads it onto its own device), or auto: the newest one in --output-dir "
     "that loads (checkpoint.pth, then model_<epoch>.pth from the highest epoch down), or start afresh if none is there")
    ("keep-last", po::value(&o.keep_last)->default_value(o.keep_last),
     "keep only the newest N model_<epoch>.pth files (0: all); checkpoint.pth is always the newest")
    ("save-every-steps", po::value(&o.save_every_steps)->default_value(o.save_every_steps),
     "also write checkpoint.pth every K steps within an epoch, with what an exact resume needs (the step, every "
     "rank's random state); 0: only at the end of each epoch. A multiple of --accum-steps")
    ("async-save", po::bool_switch(&o.async_save)->default_value(false),
     "rank 0 copies the state into host memory and writes it from a background thread while training goes on; the "
     "next save, and the end of the run, wait for the write to land")
    ("on-save-error", po::value(&o.on_save_error)->default_value(o.on_save_error),
     "when a checkpoint cannot be written (disk full, permissions): stop the job, or continue with a warning (the "
     "previous checkpoint stays intact either way; a run that never saved one ends with exit code 1)")
    ("nan-policy", po::value(&o.nan_policy)->default_value(o.nan_policy),
     "when the loss is NaN or inf on any rank: stop (every rank stops before that step's update, exit code 4; the last "
     "checkpoint is kept) or skip-step (every rank skips that step's update and trains on; 10 in a row stop the run)")
    ("map-location", po::value(&o.map_location),
     "where loaded storages go, by the device they were saved from, as in torch.load: FROM=TO[,FROM=TO...] "
     "(e.g. cuda:1=cuda:0); the others go to the rank's own device")
    ("resume-broadcast", po::bool_switch(&o.resume_broadcast)->default_value(false),
     "rank 0 reads the checkpoint and broadcasts its bytes, instead of every rank opening the file (for file systems "
     "that suffer when many ranks open one file)")
    ("stop-after-steps", po::value(&o.stop_after_steps)->default_value(o.stop_after_steps),
     "train this many steps in this run, write a checkpoint and exit (0: train to --epochs); --resume auto then "
     "continues exactly there. For time-boxed jobs and resume tests. A multiple of --accum-steps")
    ("preempt-signals", po::value(&o.preempt_signals)->default_value(o.preempt_signals),
     "signals that preempt the run (comma-separated, e.g. USR1,TERM; none: off): every rank finishes its step, the "
     "ranks agree at that step boundary, rank 0 writes a checkpoint, and all exit with code 75 (requeue me); "
     "--resume auto continues exactly there")
    ("start-epoch", po::value(&o.start_epoch)->default_value(o.start_epoch),
     "first epoch to train (with --resume, the checkpoint's epoch + 1 is used)")
    ("seed", po::value(&o.seed)->default_value(o.seed), "seed of weights, dropout and the data order")
    ("train-limit", po::value(&o.train_limit)->default_value(o.train_limit),
     "use only the first N training images (0: all)")
    ("test-limit", po::value(&o.test_limit)->default_value(o.test_limit), "use only the first N test images (0: all)")
    ("threads", po::value(&o.threads)->default_value(o.threads),
     "intra-op threads per rank (0: the node's cores divided by the ranks on the node)")
    ("backend", po::value(&o.backend)->default_value(o.backend),
     "collectives: auto (NCCL when the device is a GPU, else MPI), mpi or nccl")
    ("comm-timeout", po::value(&o.comm_timeout)->default_value(o.comm_timeout, "-1"),
     "seconds a collective may take before the job is aborted with a message naming the missing ranks (0: no limit;"
     " -1: DDPRUN_COMM_TIMEOUT, else 300)")
    ("comm-check", po::bool_switch(&o.comm_check)->default_value(o.comm_check),
     "before every collective, check that all ranks pass the same tensor sizes (also DDPRUN_COMM_CHECK=1)")
    ("grad-sync", po::value(&o.grad_sync)->default_value(o.grad_sync),
     "how gradients are averaged: ddp (buckets all-reduced during backward) or per-param (each parameter's gradient "
     "all-reduced on its own after backward, as pytorch/examples' cpp/distributed does: the benchmarks' baseline; "
     "buffers are broadcast once at the start, --bucket-cap-mb does not apply)")
    ("bucket-cap-mb", po::value(&o.bucket_cap_mb)->default_value(o.bucket_cap_mb, "25"),
     "gradient bucket size in MiB; a full bucket is all-reduced while backward goes on (the first bucket: 1 MiB)")
    ("accum-steps", po::value(&o.accum_steps)->default_value(o.accum_steps),
     "backward passes per optimizer step (gradient accumulation; gradients are all-reduced on the last only)")
    ("find-unused-parameters", po::bool_switch(&o.find_unused_parameters)->default_value(false),
     "a parameter that gets no gradient counts as zero instead of stopping the run")
    ("grad-compression", po::value(&o.grad_compression)->default_value(o.grad_compression),
     "the gradients' dtype on the wire: none, fp16 or bf16")
    ("timeline", po::value(&o.timeline),
     "write a Chrome trace (chrome://tracing, ui.perfetto.dev) of rank 0's steps to this file: forward, backward, "
     "optimizer step, and each bucket's all-reduce from ready to done; with {rank} in the name (trace-{rank}.json) "
     "every rank writes its own, on a time axis the ranks share");
  // clang-format on
  return desc;
}

void require_one_of(const char* flag, const std::string& value, const std::vector<std::string>& known,
                    const char* what) {
  if (std::find(known.begin(), known.end(), value) != known.end()) return;
  std::string list;
  for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
  throw UsageError(std::string("--") + flag + " '" + value + "' is not a known " + what + "; choose one of: " + list);
}

template <typename T>
void require(bool ok, const char* flag, T value, const char* rule) {
  if (ok) return;
  std::ostringstream out;
  out << "--" << flag << " " << value << " is out of range: " << rule;
  throw UsageError(out.str());
}

}  // namespace

ParseResult parse_options(int argc, const char* const argv[]) {
  ParseResult result;
  TrainOptions& o = result.options;
  po::options_description desc = describe(o);
  po::variables_map vm, command_line, config;  // all values; and each source alone, to resolve --wd
  try {
    const auto parsed = po::command_line_parser(argc, argv).options(desc).run();
    po::store(parsed, command_line);
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::ostringstream text;
      text << desc;
      result.help_requested = true;
      result.help_text = text.str();
      return result;
    }
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::string text;
      try {
        text = read_small_file(path, kMaxConfigBytes, "--config");
      } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
      }
      std::istringstream file(text);
      const auto from_file = po::parse_config_file(file, desc);
      po::store(from_file, config);
      po::store(from_file, vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(std::string(e.what()) + "; run ddptrain --help for the flags");
  }
  // --wd is --weight-decay's other name: the command line wins over the config file, whichever name each uses.
  auto given = [](const po::variables_map& source, const char* name) {
    return source.count(name) && !source[name].defaulted();
  };
  for (const po::variables_map* source : {&command_line, &config}) {
    const bool short_name = given(*source, "wd"), long_name = given(*source, "weight-decay");
    if (short_name && long_name && (*source)["wd"].as<double>() != (*source)["weight-decay"].as<double>())
      throw UsageError("--wd and --weight-decay are the same flag and were given different values");
    if (short_name || long_name) {
      o.weight_decay = (*source)[short_name ? "wd" : "weight-decay"].as<double>();
      break;
    }
  }

  // Every floating-point flag: NaN and inf are refused whatever its range (a NaN passes no comparison below, but an
  // inf passes "must be positive", and --lr inf trained to a NaN loss and exited 0).
  for (const auto& [flag, value] : {std::pair<const char*, double>{"lr", o.lr},
                                    {"momentum", o.momentum},
                                    {"weight-decay", o.weight_decay},
                                    {"lr-gamma", o.lr_gamma},
                                    {"lr-min", o.lr_min},
                                    {"lr-warmup-decay", o.lr_warmup_decay},
                                    {"label-smoothing", o.label_smoothing},
                                    {"clip-grad-norm", o.clip_grad_norm},
                                    {"model-ema-decay", o.model_ema_decay},
                                    {"comm-timeout", o.comm_timeout},
                                    {"bucket-cap-mb", o.bucket_cap_mb}}) {
    require(std::isfinite(value), flag, value, "must be a finite number");
  }
  require_one_of("model", o.model, known_models(), "model");
  require_one_of("opt", o.opt, known_optimizers(), "optimizer");
  require_one_of("lr-scheduler", o.lr_scheduler, LrScheduler::known_names(), "learning-rate scheduler");
  require_one_of("lr-warmup-method", o.lr_warmup_method, LrScheduler::known_warmup_methods(), "warm-up method");
  require(o.epochs >= 1, "epochs", o.epochs, "must be at least 1");
  require(o.batch_size >= 1, "batch-size", o.batch_size, "must be at least 1");
  // A learning rate above kMaxLearningRate diverges at the first step whatever the model (and 1e308 does not even fit
  // the float32 weights it multiplies).
  require(o.lr > 0 && o.lr <= kMaxLearningRate, "lr", o.lr, "must be positive and at most 1000");
  require(o.momentum >= 0 && o.momentum < 1, "momentum", o.momentum, "must be in [0, 1)");
  if (o.opt == "sgd_nesterov") require(o.momentum > 0, "momentum", o.momentum, "must be positive for sgd_nesterov");
  require(o.weight_decay >= 0 && o.weight_decay <= kMaxLearningRate, "weight-decay", o.weight_decay,
          "must be from 0 to 1000");
  require(o.lr_step_size >= 1, "lr-step-size", o.lr_step_size, "must be at least 1");
  require(o.lr_gamma > 0 && o.lr_gamma <= kMaxLearningRate, "lr-gamma", o.lr_gamma,
          "must be positive and at most 1000");
  require(o.lr_min >= 0 && o.lr_min <= kMaxLearningRate, "lr-min", o.lr_min, "must be from 0 to 1000");
  require(o.lr_warmup_epochs >= 0, "lr-warmup-epochs", o.lr_warmup_epochs, "must not be negative");
  require(o.lr_warmup_decay > 0 && o.lr_warmup_decay <= 1, "lr-warmup-decay", o.lr_warmup_decay, "must be in (0, 1]");
  require(o.label_smoothing >= 0 && o.label_smoothing < 1, "label-smoothing", o.label_smoothing, "must be in [0, 1)");
  require(o.clip_grad_norm >= 0 && o.clip_grad_norm <= 1e30, "clip-grad-norm", o.clip_grad_norm,
          "must be from 0 (off) to 1e30");
  require(o.model_ema_steps >= 1, "model-ema-steps", o.model_ema_steps, "must be at least 1");
  require(o.model_ema_decay > 0 && o.model_ema_decay < 1, "model-ema-decay", o.model_ema_decay, "must be in (0, 1)");
  if (o.sync_bn && o.model != "resnet18")
    throw UsageError("--sync-bn synchronizes BatchNorm layers, and --model " + o.model +
                     " has none; use it with --model resnet18");
  if (o.test_only && o.resume.empty())
    throw UsageError(
        "--test-only evaluates a checkpoint: give it with --resume PATH (or --resume auto); without "
        "one it would score an untrained model");
  if (o.lr_scheduler == "cosineannealinglr" && o.lr_warmup_epochs >= o.epochs)
    throw UsageError("--lr-warmup-epochs " + std::to_string(o.lr_warmup_epochs) + " leaves no epoch of --epochs " +
                     std::to_string(o.epochs) + " for cosineannealinglr; warm up for fewer epochs");
  require(o.keep_last >= 0, "keep-last", o.keep_last, "must not be negative (0 keeps all)");
  require(o.accum_steps >= 1, "accum-steps", o.accum_steps, "must be at least 1");
  require(o.save_every_steps >= 0, "save-every-steps", o.save_every_steps, "must not be negative (0: per epoch only)");
  require(o.stop_after_steps >= 0, "stop-after-steps", o.stop_after_steps, "must not be negative (0: no stop)");
  // A checkpoint taken inside an accumulation window would lose the gradients accumulated so far.
  for (const auto& [flag, steps] : {std::pair<const char*, int>{"save-every-steps", o.save_every_steps},
                                    std::pair<const char*, int>{"stop-after-steps", o.stop_after_steps}}) {
    if (steps % o.accum_steps != 0)
      throw UsageError(std::string("--") + flag + " " + std::to_string(steps) + " is not a multiple of --accum-steps " +
                       std::to_string(o.accum_steps) + ": a checkpoint cannot hold half-accumulated gradients");
  }
  try {
    parse_signal_list(o.preempt_signals);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--preempt-signals: ") + e.what());
  }
  require_one_of("on-save-error", o.on_save_error, {"stop", "continue"}, "choice");
  require_one_of("nan-policy", o.nan_policy, {"stop", "skip-step"}, "choice");
  if (!o.map_location.empty()) {
    try {
      check_map_location(o.map_location);
    } catch (const std::exception& e) {
      throw UsageError(std::string("--map-location: ") + e.what());
    }
  }
  require(o.seed >= 0, "seed", o.seed, "must not be negative");
  require(o.start_epoch >= 0, "start-epoch", o.start_epoch, "must not be negative");
  require(o.train_limit >= 0, "train-limit", o.train_limit, "must not be negative (0 means all)");
  require(o.test_limit >= 0, "test-limit", o.test_limit, "must not be negative (0 means all)");
  require(o.threads >= 0 && o.threads <= 1024, "threads", o.threads, "must be from 0 (automatic) to 1024");
  if (o.backend != "auto" && o.backend != "mpi" && o.backend != "nccl")
    throw UsageError("--backend '" + o.backend + "' is not a backend; choose auto, mpi or nccl");
  require_one_of("grad-sync", o.grad_sync, {"ddp", "per-param"}, "gradient synchronization");
  if (o.grad_sync == "per-param" && (o.grad_compression != "none" || o.find_unused_parameters))
    throw UsageError(
        "--grad-sync per-param all-reduces full-precision gradients, zeros for unused parameters; drop "
        "--grad-compression and --find-unused-parameters, or use --grad-sync ddp");
  require(o.bucket_cap_mb > 0 && o.bucket_cap_mb <= 65536, "bucket-cap-mb", o.bucket_cap_mb,
          "must be positive and at most 65536 (64 GiB)");
  if (o.grad_compression != "none" && o.grad_compression != "fp16" && o.grad_compression != "bf16")
    throw UsageError("--grad-compression '" + o.grad_compression + "' is not known; choose none, fp16 or bf16");
  require(o.comm_timeout == -1 || (o.comm_timeout >= 0 && o.comm_timeout <= kMaxCommTimeoutSeconds), "comm-timeout",
          o.comm_timeout, "must be -1 (the default), 0 (no limit) or up to 604800 (a week)");
  if (o.output_dir.empty()) throw UsageError("--output-dir is empty; give a folder for checkpoints and metrics");
  return result;
}

}  // namespace ddprun::trainer
