// The training loop of ddptrain, as torchvision's classification reference runs it: train_one_epoch,
// lr_scheduler.step(), evaluate, save {"model", "optimizer", "lr_scheduler", "epoch", "args"} on rank 0 (with what an
// exact resume needs: the step within the epoch, the sampler's position, every rank's random state and loss so far).
// It uses ddprun's public library only, as a user's program does: the process group, DistributedDataParallel,
// torch::optim with LrScheduler, the sampler, TrainingState and CheckpointManager, PreemptionGuard.
#include "trainer/trainer.h"

#include "ddprun/checkpoint.h"
#include "ddprun/distributed_data_parallel.h"
#include "ddprun/distributed_sampler.h"
#include "ddprun/errors.h"
#include "ddprun/lr_scheduler.h"
#include "ddprun/mixed_precision.h"
#include "ddprun/model_ema.h"
#include "ddprun/preemption_guard.h"
#include "ddprun/sync_batch_norm.h"
#include "trainer/blas_info.h"
#include "trainer/fault_injection.h"
#include "trainer/idx_dataset.h"
#include "trainer/metrics.h"
#include "trainer/models.h"
#include "trainer/timeline.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>
#include <tuple>
#include <utility>

namespace ddprun::trainer {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// A live progress line only makes sense on a terminal. Under mpirun a rank's stdout is a pseudo-terminal even when
// mpirun's own output goes to a file, so ranks started by a launcher follow DDPRUN_PROGRESS (ddprun sets it from
// its own stdout) and otherwise stay quiet.
bool progress_wanted(const ProcessGroup& group) {
  if (const char* setting = std::getenv(kEnvProgress)) return std::strcmp(setting, "1") == 0;
  return group.launch().launcher.empty() && isatty(STDOUT_FILENO);
}

// Intra-op threads for one of `local_ranks` ranks on this node: the cores this rank may run on when the launcher
// bound it to a subset, else the node's cores shared evenly.
int default_thread_count(int local_ranks) {
  const int online = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  cpu_set_t set;
  CPU_ZERO(&set);
  const int allowed = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : online;
  if (allowed < online) return std::max(1, allowed);
  return std::max(1, online / local_ranks);
}

// The shortest text that reads back as the same double.
std::string exact_text(double value) {
  char text[32];
  return std::string(text, std::to_chars(text, text + sizeof text, value).ptr);
}

// What must be the same on every rank for the collectives to line up, one "name value" per line.
std::string run_fingerprint(const TrainOptions& o, int64_t train_size, int64_t test_size) {
  std::ostringstream out;
  out << "model " << o.model << "\nepochs " << o.epochs << "\nbatch-size " << o.batch_size << "\nlr "
      << exact_text(o.lr) << "\nopt " << o.opt << "\nmomentum " << exact_text(o.momentum) << "\nweight-decay "
      << exact_text(o.weight_decay) << "\nlr-scheduler " << o.lr_scheduler << "\nlr-step-size " << o.lr_step_size
      << "\nlr-gamma " << exact_text(o.lr_gamma) << "\nlr-min " << exact_text(o.lr_min) << "\nlr-warmup-epochs "
      << o.lr_warmup_epochs << "\nlr-warmup-method " << o.lr_warmup_method << "\nlr-warmup-decay "
      << exact_text(o.lr_warmup_decay) << "\nseed " << o.seed << "\nstart-epoch " << o.start_epoch << "\nresume "
      << o.resume << "\nresume-broadcast " << o.resume_broadcast << "\nsave-every-steps " << o.save_every_steps
      << "\nasync-save " << o.async_save << "\non-save-error " << o.on_save_error << "\nnan-policy " << o.nan_policy
      << "\npreempt-signals " << o.preempt_signals << "\nbackend " << o.backend << "\ngrad-sync " << o.grad_sync
      << "\nbucket-cap-mb " << exact_text(o.bucket_cap_mb) << "\naccum-steps " << o.accum_steps
      << "\nfind-unused-parameters " << o.find_unused_parameters << "\ngrad-compression " << o.grad_compression
      << "\namp " << o.amp << "\nsync-bn " << o.sync_bn << "\nclip-grad-norm " << exact_text(o.clip_grad_norm)
      << "\nmodel-ema " << o.model_ema << "\nmodel-ema-steps " << o.model_ema_steps << "\nmodel-ema-decay "
      << exact_text(o.model_ema_decay) << "\ntraining samples " << train_size << "\ntest samples " << test_size << "\n";
  return out.str();
}

// torchvision's "args": the flags as a plain dict.
void add_args(TrainingState& state, const TrainOptions& o) {
  state.arg("data_path", o.data_path).arg("model", o.model).arg("epochs", int64_t{o.epochs});
  state.arg("batch_size", int64_t{o.batch_size}).arg("lr", o.lr).arg("opt", o.opt).arg("momentum", o.momentum);
  state.arg("weight_decay", o.weight_decay).arg("lr_scheduler", o.lr_scheduler);
  state.arg("lr_step_size", int64_t{o.lr_step_size}).arg("lr_gamma", o.lr_gamma).arg("lr_min", o.lr_min);
  state.arg("lr_warmup_epochs", int64_t{o.lr_warmup_epochs}).arg("lr_warmup_method", o.lr_warmup_method);
  state.arg("lr_warmup_decay", o.lr_warmup_decay).arg("output_dir", o.output_dir).arg("resume", o.resume);
  state.arg("label_smoothing", o.label_smoothing).arg("test_only", o.test_only).arg("amp", o.amp);
  state.arg("clip_grad_norm", o.clip_grad_norm).arg("sync_bn", o.sync_bn).arg("model_ema", o.model_ema);
  state.arg("model_ema_steps", int64_t{o.model_ema_steps}).arg("model_ema_decay", o.model_ema_decay);
  state.arg("keep_last", int64_t{o.keep_last}).arg("save_every_steps", int64_t{o.save_every_steps});
  state.arg("async_save", o.async_save).arg("on_save_error", o.on_save_error).arg("nan_policy", o.nan_policy);
  state.arg("preempt_signals", o.preempt_signals).arg("start_epoch", int64_t{o.start_epoch}).arg("seed", o.seed);
  state.arg("train_limit", o.train_limit).arg("test_limit", o.test_limit).arg("threads", int64_t{o.threads});
}

// --opt: torch::optim's SGD (with --momentum, Nesterov for sgd_nesterov) or AdamW (PyTorch's default betas and
// eps), which with ddprun's LrScheduler compute what Python's torch.optim computes, bit for bit.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<at::Tensor>& params, const TrainOptions& o) {
  if (o.opt == "adamw")
    return std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(o.lr)
                                                         .momentum(o.momentum)
                                                         .weight_decay(o.weight_decay)
                                                         .nesterov(o.opt == "sgd_nesterov"));
}

class Run {
 public:
  Run(const TrainOptions& options, ProcessGroup& group, std::string host_memory)
      : o_(options),
        group_(group),
        rank0_(group.rank() == 0),
        host_memory_(std::move(host_memory)),
        timeline_(options.timeline, group.rank()) {}

  int execute() {
    set_up();
    if (o_.test_only) {  // torchvision's --test-only: score the checkpoint's model and train nothing
      if (!resumed_)
        throw UsageError(
            "--test-only: --resume " + o_.resume + " found no checkpoint in '" + o_.output_dir + "' to evaluate",
            /*failed_rank=*/0);  // the ranks agreed on the resume: every rank throws this
      epoch_of_evaluation_ = start_epoch_;
      const auto [acc1, acc5] = evaluate(*model_);
      std::string ema;
      if (ema_) {
        const auto [ema1, ema5] = evaluate(*ema_model_);
        char text[96];
        std::snprintf(text, sizeof text, "  ema: test_acc1 %.2f%%  test_acc5 %.2f%%", ema1, ema5);
        ema = text;
      }
      if (rank0_)
        std::printf(
            "ddptrain: --test-only: %s: test_acc1 %.2f%%  test_acc5 %.2f%%%s\n",
            (resume_step_ > 0 ? "epoch " + std::to_string(start_epoch_) + " at step " + std::to_string(resume_step_)
                              : "the end of epoch " + std::to_string(start_epoch_ - 1))
                .c_str(),
            acc1, acc5, ema.c_str());
      return kExitSuccess;
    }
    if (start_epoch_ >= o_.epochs) {
      if (rank0_)
        std::printf("ddptrain: nothing to train: the run is at epoch %d and --epochs is %d\n", start_epoch_, o_.epochs);
      return kExitSuccess;
    }
    for (int epoch = start_epoch_; epoch < o_.epochs; ++epoch) {
      EpochMetrics m;
      m.epoch = epoch;
      m.world_size = group_.world_size();
      m.lr = lr();
      m.resumed = epoch == start_epoch_ && resumed_;
      const auto start = Clock::now();
      train_one_epoch(epoch, m, epoch == start_epoch_ ? resume_step_ : 0);
      if (stopped_mid_epoch_) break;  // --stop-after-steps or a preemption: its checkpoint is written
      scheduler_->step();
      epoch_of_evaluation_ = epoch;
      std::tie(m.test_acc1, m.test_acc5) = evaluate(*model_);
      if (ema_) {
        m.has_ema = true;
        std::tie(m.test_acc1_ema, m.test_acc5_ema) = evaluate(*ema_model_);
      }
      if (scaler_) {
        m.amp = true;
        m.amp_scale = scaler_->get_scale();
        m.amp_skipped_steps = skipped_steps_;
      }
      m.epoch_seconds = seconds_since(start);
      if (rank0_) {
        std::printf("%s\n", to_text(m, o_.epochs).c_str());
        std::fflush(stdout);
      }
      save_checkpoint(epoch + 1, 0, &m);
      // A signal during evaluation (or the save) stops the run here, at the epoch's end; after the last epoch there
      // is nothing left to stop.
      if (!stop_requested_ && epoch + 1 < o_.epochs && guard_->should_stop()) {
        stop_requested_ = true;
        stopped_at_epoch_ = epoch;
        stopped_at_step_ = epoch_steps_;
      }
      if (stop_requested_) break;
    }
    // The last write must land before the job reports success (with --async-save it may still be going).
    checkpoints_->wait();
    const int signal = guard_->signal();
    const bool completed = stopped_at_epoch_ == o_.epochs - 1 && stopped_at_step_ == epoch_steps_;
    if (signal != 0 && completed) {
      if (rank0_)
        std::printf("ddptrain: %s arrived at the last step of the last epoch: training is complete\n",
                    signal_name(signal).c_str());
      return kExitSuccess;
    }
    if (signal != 0) {
      if (rank0_) {
        std::printf(
            "ddptrain: preempted by %s: every rank stopped after epoch %d step %lld; %s in %s; exit code %d asks for "
            "a requeue; continue with --resume auto\n",
            signal_name(signal).c_str(), stopped_at_epoch_, static_cast<long long>(stopped_at_step_),
            checkpoints_->last_save_failed()
                ? "its checkpoint could not be written (see above): it continues from the previous one"
                : "checkpoint saved",
            o_.output_dir.c_str(), kExitPreempted);
        std::fflush(stdout);
      }
      return kExitPreempted;
    }
    if (stop_requested_ && rank0_)
      std::printf(
          "ddptrain: stopped after %d steps as --stop-after-steps asked; checkpoint saved in %s; continue with "
          "--resume auto\n",
          o_.stop_after_steps, o_.output_dir.c_str());
    return kExitSuccess;
  }

 private:
  double lr() const { return optimizer_->param_groups().front().options().get_lr(); }

  void set_up() {
    device_ = group_.device();
    group_.run_on_every_rank([&] {
      try {
        faults_ = FaultInjection::from_environment(group_.rank(), group_.launch().ddprun_restarts);
      } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
      }
    });
    // Once every rank catches its preemption signals (since before MPI started), ddprun passes them on.
    GuardOptions guard;
    guard.signals = parse_signal_list(o_.preempt_signals);
    guard.nan_policy = o_.nan_policy == "skip-step" ? NanPolicy::SkipStep : NanPolicy::Stop;
    guard_ = std::make_unique<PreemptionGuard>(group_, guard);

    const int threads = o_.threads > 0 ? o_.threads : default_thread_count(group_.local_size());
    at::set_num_threads(threads);
    if (rank0_) {
      const BlasInfo blas = detect_blas();
      std::printf(
          "ddptrain: %d rank(s) over %s (%s), device %s, %d intra-op thread(s) per rank, host memory: %s\n"
          "ddptrain: BLAS: %s%s%s\n",
          group_.world_size(), group_.backend_name().c_str(), group_.launch().describe().c_str(), device_.str().c_str(),
          threads, host_memory_.c_str(), blas.name.c_str(),
          blas.library_path.empty() ? "" : (" (" + blas.library_path + ")").c_str(),
          blas.detail.empty() ? "" : (" [" + blas.detail + "]").c_str());
      if (blas.is_reference)
        std::fprintf(stderr,
                     "ddptrain: warning: LibTorch is using the reference BLAS, which is many times slower; install an "
                     "optimized one (apt-get install libopenblas0-openmp)\n");
      std::fflush(stdout);
    }

    group_.run_on_every_rank([&] {
      try {
        train_data_ = load_idx_dataset(o_.data_path, Split::Train, o_.train_limit);
        test_data_ = load_idx_dataset(o_.data_path, Split::Test, o_.test_limit);
      } catch (const DataError& e) {
        throw SetUpError(std::string("cannot load the data set: ") + e.what() +
                         "; check --data-path (Debian's dataset-fashion-mnist package installs "
                         "/usr/share/datasets/fashion-mnist)");
      }
    });
    // Different flags, config files or data on different nodes would make the ranks' collectives disagree.
    group_.require_same_on_every_rank(run_fingerprint(o_, train_data_.size(), test_data_.size()),
                                      "run (its flags, config file and data)");

    torch::manual_seed(static_cast<uint64_t>(o_.seed));
    if (o_.sync_bn) {  // torchvision: SyncBatchNorm.convert_sync_batchnorm(model), before DDP wraps it
      model_ =
          make_model(o_.model, 1, 10, [](int64_t features) { return torch::nn::AnyModule(SyncBatchNorm(features)); });
      convert_sync_batchnorm(*model_, group_);
    } else {
      model_ = make_model(o_.model);
    }
    model_->to(device_);
    params_ = model_->parameters();
    optimizer_ = make_optimizer(params_, o_);
    LrSchedulerOptions schedule;
    schedule.name = o_.lr_scheduler;
    schedule.epochs = o_.epochs;
    schedule.step_size = o_.lr_step_size;
    schedule.gamma = o_.lr_gamma;
    schedule.eta_min = o_.lr_min;
    schedule.warmup_epochs = o_.lr_warmup_epochs;
    schedule.warmup_method = o_.lr_warmup_method;
    schedule.warmup_decay = o_.lr_warmup_decay;
    scheduler_ = std::make_unique<LrScheduler>(*optimizer_, schedule);
    sampler_ = std::make_unique<DistributedSampler>(train_data_.size(), group_, /*shuffle=*/true, o_.seed);

    TrainingState state(*model_);
    state.optimizer(*optimizer_).lr_scheduler(*scheduler_).sampler(*sampler_, o_.batch_size);
    state.rank_number("train_loss_sum", epoch_loss_sum_).rank_number("train_samples", epoch_samples_);
    if (o_.amp) {  // torchvision's "scaler"; one rank's inf/NaN gradient skips the step on every rank
      scaler_ = std::make_unique<GradScaler>(group_);
      state.grad_scaler(*scaler_);
    }
    if (o_.model_ema) {  // torchvision's "model_ema", with train.py's decay adjustment
      ema_model_ = make_model(o_.model);
      ema_model_->to(device_);
      const double adjust = static_cast<double>(int64_t{group_.world_size()} * o_.batch_size * o_.model_ema_steps) /
                            static_cast<double>(o_.epochs);
      const double alpha = std::min(1.0, (1.0 - o_.model_ema_decay) * adjust);
      ema_ = std::make_shared<ExponentialMovingAverage>(*model_, ema_model_, 1.0 - alpha);
      state.module("model_ema", *ema_);
    }
    add_args(state, o_);
    CheckpointOptions where;
    where.directory = o_.output_dir;
    where.keep_last = o_.keep_last;
    where.async_save = o_.async_save;
    where.on_save_error = o_.on_save_error == "continue" ? OnSaveError::Warn : OnSaveError::Throw;
    where.map_location = o_.map_location;
    where.read_on_rank0 = o_.resume_broadcast;
    where.directory_name = "--output-dir";
    where.resume_name = "--resume";
    where.read_on_rank0_name = "--resume-broadcast";
    where.resume_auto_name = "--resume auto";
    checkpoints_ = std::make_unique<CheckpointManager>(group_, state, where);
    // --timeline: a path it cannot write fails now, not after the first epoch (after the output folder exists, which
    // may hold the trace). The flags are the same on every rank (checked above), so all of them agree here or none.
    if (!o_.timeline.empty()) {
      group_.run_on_every_rank([&] {
        try {
          timeline_.check_writable();
        } catch (const std::runtime_error& e) {
          throw SetUpError(e.what());
        }
      });
      timeline_.start_clock();  // every rank leaves that agreement together: the ranks' traces share a time axis
    }

    start_epoch_ = o_.start_epoch;
    if (!o_.resume.empty()) {
      const ResumePoint at = o_.resume == "auto" ? checkpoints_->resume_auto() : checkpoints_->resume(o_.resume);
      resumed_ = !checkpoints_->resumed_from().empty();
      if (resumed_) {
        start_epoch_ = static_cast<int>(at.epoch);
        resume_step_ = at.step;
        resume_exact_ = at.exact;
      }
    }

    // Every rank starts from rank 0's weights and buffers (they differ only if a rank was seeded or resumed
    // differently); from here on gradients are averaged in buckets during backward, or for --grad-sync per-param
    // one parameter at a time after it.
    if (o_.grad_sync == "per-param") {
      std::vector<at::Tensor> state_tensors = params_;
      for (const at::Tensor& b : model_->buffers()) state_tensors.push_back(b);
      at::NoGradGuard no_grad;
      for (const at::Tensor& t : state_tensors) group_.broadcast(t, 0);
      return;
    }
    DdpOptions ddp_options;
    ddp_options.bucket_cap_mb = o_.bucket_cap_mb;
    ddp_options.find_unused_parameters = o_.find_unused_parameters;
    ddp_options.gradient_dtype = o_.grad_compression;
    if (timeline_.enabled()) {
      ddp_options.on_bucket_done = [this](const BucketTiming& t) {
        timeline_.span("all-reduce bucket " + std::to_string(t.bucket), Timeline::kAllReduce, t.ready, t.done,
                       "\"bucket\": " + std::to_string(t.bucket) + ", \"bytes\": " + std::to_string(t.bytes));
      };
    }
    ddp_ = std::make_unique<DistributedDataParallel<Model>>(model_, group_, ddp_options);
  }

  // Trains steps [first_step, steps) of `epoch`; a first_step past 0 continues a mid-epoch checkpoint.
  void train_one_epoch(int epoch, EpochMetrics& m, int64_t first_step) {
    model_->train();
    sampler_->set_epoch(epoch);
    stall_seconds_ = 0;
    // Dropout draws from the global generator: seeded per (seed, rank, epoch), so that an epoch's randomness does not
    // depend on how the run got there; an exact mid-epoch resume has put back the generators and the loss so far.
    if (!(first_step > 0 && resume_exact_)) {
      torch::manual_seed(static_cast<uint64_t>(o_.seed) * 1000003ULL + static_cast<uint64_t>(group_.rank()) * 7919ULL +
                         static_cast<uint64_t>(epoch));
      epoch_loss_sum_ = 0;
      epoch_samples_ = 0;
    }
    resume_exact_ = false;
    if (!std::isfinite(epoch_loss_sum_) || epoch_loss_sum_ < 0 || epoch_samples_ < 0)
      throw SetUpError("the checkpoint's loss so far (train_loss_sum " + exact_text(epoch_loss_sum_) +
                           ", train_samples " + std::to_string(epoch_samples_) + ") is not a loss sum",
                       group_.rank());
    const at::Tensor order = sampler_->indices();
    const int64_t samples = order.size(0);
    const int64_t steps = (samples + o_.batch_size - 1) / o_.batch_size;
    epoch_steps_ = steps;
    first_step = std::min(first_step, steps);
    const int64_t samples_before = epoch_samples_;
    ProgressLine progress(rank0_ && progress_wanted(group_));
    const auto start = Clock::now();
    bool window_non_finite = false;  // a NaN/inf loss in the current accumulation window
    for (int64_t step = first_step; step < steps; ++step) {
      const auto batch_start = Clock::now();
      const int64_t begin = step * o_.batch_size;
      const at::Tensor indices = order.narrow(0, begin, std::min<int64_t>(o_.batch_size, samples - begin));
      auto [images, labels] = make_batch(train_data_, indices);
      images = images.to(device_);
      labels = labels.to(device_);
      // --accum-steps K: K backward passes per optimizer step, all-reduced on the last (the epoch's tail may be a
      // shorter window); each loss is divided by the window so the step sees the mean over its samples.
      const int64_t window_start = step - step % o_.accum_steps;
      const int64_t window = std::min<int64_t>(o_.accum_steps, steps - window_start);
      const bool steps_now = step - window_start == window - 1;
      if (step == window_start) optimizer_->zero_grad();
      const auto forward_start = Clock::now();
      at::Tensor loss;
      {
        std::optional<Autocast> autocast;  // --amp: the forward pass and the loss, as torchvision's train.py
        if (o_.amp) autocast.emplace(device_.type());
        loss = classification_loss(ddp_ ? ddp_->forward(images) : model_->forward(images), labels, o_.label_smoothing);
      }
      const auto backward_start = Clock::now();
      {
        std::optional<DistributedDataParallelBase::NoSync> no_sync;
        if (!steps_now && ddp_) no_sync.emplace(*ddp_);
        const at::Tensor window_loss = window > 1 ? loss / static_cast<double>(window) : loss;
        (scaler_ ? scaler_->scale(window_loss) : window_loss).backward();
      }
      const auto backward_end = Clock::now();
      if (steps_now && !ddp_) average_gradients_per_parameter();
      if (steps_now && scaler_) scaler_->unscale_(*optimizer_);  // before clipping; agrees on inf/NaN
      if (steps_now && o_.clip_grad_norm > 0)                    // the averaged gradients: the same norm on every rank
        torch::nn::utils::clip_grad_norm_(params_, o_.clip_grad_norm);
      const double loss_value = loss.item<double>();
      window_non_finite = window_non_finite || !std::isfinite(loss_value);
      faults_.after_step(epoch, step + 1);
      // A step boundary: before the update, the ranks agree on what any of them saw (one small all-reduce): a NaN
      // or inf loss (the update would poison every rank's weights) and a preemption signal (acted on after it).
      bool update = steps_now;
      const auto check_start = Clock::now();
      if (steps_now) {
        update = check_step(window_non_finite ? std::numeric_limits<double>::quiet_NaN() : loss_value, epoch, step);
        window_non_finite = false;
        if (!update) optimizer_->zero_grad();  // --nan-policy skip-step
      }
      const auto step_start = Clock::now();
      if (scaler_ && steps_now) {  // an inf/NaN gradient on any rank: no step, a lower scale
        if (!(update && scaler_->step(*optimizer_))) ++skipped_steps_;
        scaler_->update();
      } else if (update) {
        optimizer_->step();
      }
      // torchvision: model_ema.update_parameters(model) when i % model_ema_steps == 0 (i: the batch of the epoch),
      // n_averaged zeroed during the warm-up epochs.
      if (ema_ && step % o_.model_ema_steps == 0) {
        ema_->update_parameters(*model_);
        if (epoch < o_.lr_warmup_epochs) ema_->n_averaged().fill_(0);
      }
      if (timeline_.enabled()) {
        const std::string where = "\"epoch\": " + std::to_string(epoch) + ", \"step\": " + std::to_string(step);
        timeline_.span("batch", Timeline::kCompute, batch_start, forward_start, where);
        timeline_.span("forward", Timeline::kCompute, forward_start, backward_start, where);
        timeline_.span("backward", Timeline::kCompute, backward_start, backward_end, where);
        if (steps_now && !ddp_)  // --grad-sync per-param: its all-reduces, after backward
          timeline_.span("all-reduce per parameter", Timeline::kAllReduce, backward_end, check_start, where);
        if (steps_now) timeline_.span("step check", Timeline::kCompute, check_start, step_start, where);
        if (update) timeline_.span("optimizer step", Timeline::kCompute, step_start, Clock::now(), where);
      }
      if (std::isfinite(loss_value)) {  // a skipped step's loss stays out of the epoch's mean
        epoch_loss_sum_ += loss_value * static_cast<double>(indices.size(0));
        epoch_samples_ += indices.size(0);
      }
      progress.update(
          epoch, step, steps, epoch_loss_sum_ / static_cast<double>(std::max<int64_t>(epoch_samples_, 1)),
          static_cast<double>((epoch_samples_ - samples_before) * group_.world_size()) / seconds_since(start));
      // --stop-after-steps N: this run's N-th step is its last (at the epoch's end, the epoch finishes as usual).
      ++steps_run_;
      // Stop here if --stop-after-steps is reached or a preemption signal reached any rank.
      if (steps_now && ((o_.stop_after_steps > 0 && steps_run_ >= o_.stop_after_steps) || guard_->stop_requested())) {
        stop_requested_ = true;
        stopped_at_epoch_ = epoch;
        stopped_at_step_ = step + 1;
        if (step + 1 < steps) {
          progress.finish();
          save_checkpoint(epoch, step + 1, nullptr);
          stopped_mid_epoch_ = true;
          break;
        }
      }
      // --save-every-steps K: a mid-epoch checkpoint after every K-th step (the epoch's end saves anyway).
      if (!stop_requested_ && o_.save_every_steps > 0 && (step + 1) % o_.save_every_steps == 0 && step + 1 < steps) {
        progress.finish();
        save_checkpoint(epoch, step + 1, nullptr);
      }
    }
    progress.finish();
    at::Tensor totals = at::zeros({3}, at::kDouble);
    totals[0] = epoch_loss_sum_;
    totals[1] = static_cast<double>(epoch_samples_);
    totals[2] = static_cast<double>(epoch_samples_ - samples_before);  // trained by this run (for images/s)
    group_.all_reduce(totals, ReduceOp::Sum);
    at::Tensor slowest = at::zeros({1}, at::kDouble);
    slowest[0] = seconds_since(start);
    group_.all_reduce(slowest, ReduceOp::Max);
    m.train_loss = totals[0].item<double>() / std::max(1.0, totals[1].item<double>());
    m.images_per_sec = totals[2].item<double>() / slowest[0].item<double>();
  }

  // The guard's agreement at a step boundary, with ddptrain's advice when the loss diverged.
  bool check_step(double loss, int epoch, int64_t step) {
    try {
      return guard_->check_step(loss, epoch, step);
    } catch (const DivergedError& e) {
      const std::string kept =
          checkpoints_->has_checkpoint() ? "the last checkpoint is kept" : "no checkpoint was written yet";
      throw DivergedError(std::string(e.what()) + "; " + kept + " (--lr " + exact_text(o_.lr) +
                              "); lower --lr, or use --nan-policy skip-step",
                          e.failed_rank());
    }
  }

  // --grad-sync per-param: pytorch/examples' cpp/distributed baseline once backward has finished: one all-reduce (sum)
  // per parameter, all issued, then all waited for, then each gradient divided by the world size. A parameter
  // without a gradient contributes zeros, so every rank issues the same collectives.
  void average_gradients_per_parameter() {
    std::vector<at::Tensor> grads;
    for (at::Tensor& p : params_) {
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      grads.push_back(p.grad());
    }
    group_.all_reduce(grads, ReduceOp::Sum);
    at::NoGradGuard no_grad;
    for (at::Tensor& p : params_) p.mutable_grad().div_(static_cast<double>(group_.world_size()));
  }

  // Top-1 and top-5 accuracy in percent over the whole test split, each rank scoring every world_size-th sample (no
  // padding, so each sample counts once).
  std::pair<double, double> evaluate(Model& model) {
    model.eval();
    at::NoGradGuard no_grad;
    const at::Tensor mine = at::arange(group_.rank(), test_data_.size(), group_.world_size(), at::kLong);
    int64_t top1 = 0, top5 = 0;
    for (int64_t begin = 0; begin < mine.size(0); begin += o_.batch_size) {
      const at::Tensor indices = mine.narrow(0, begin, std::min<int64_t>(o_.batch_size, mine.size(0) - begin));
      auto [images, labels] = make_batch(test_data_, indices);
      const at::Tensor log_probs = model.forward(images.to(device_));
      const auto [hits1, hits5] = count_top1_top5(log_probs, labels.to(device_));
      top1 += hits1;
      top5 += hits5;
      faults_.during_evaluation(epoch_of_evaluation_);
    }
    at::Tensor counts = at::zeros({3}, at::kLong);
    counts[0] = top1;
    counts[1] = top5;
    counts[2] = mine.size(0);
    group_.all_reduce(counts, ReduceOp::Sum);
    const double total = static_cast<double>(counts[2].item<int64_t>());
    return {100.0 * static_cast<double>(counts[0].item<int64_t>()) / total,
            100.0 * static_cast<double>(counts[1].item<int64_t>()) / total};
  }

  // The checkpoint of `step` batches into `epoch` (0: the end of epoch - 1), then, at an epoch's end, the epoch's
  // metrics on rank 0.
  void save_checkpoint(int epoch, int64_t step, EpochMetrics* m) {
    const auto start = Clock::now();
    try {
      checkpoints_->save({epoch, step});
    } catch (const Error& e) {
      if (e.exit_code() != kExitDiverged) throw;
      throw Error(kExitDiverged, std::string(e.what()) + " (--lr " + exact_text(o_.lr) + "); lower --lr",
                  e.failed_rank());
    }
    stall_seconds_ += seconds_since(start);
    if (m == nullptr) return;
    group_.run_on_every_rank([&] {
      timeline_.write();  // the steps so far, rewritten after each epoch (on every rank with "{rank}" in its name)
      if (!rank0_) return;
      m->checkpoint_stall_seconds = stall_seconds_;
      append_line(o_.output_dir + "/metrics.jsonl", to_json(*m));
    });
  }

  const TrainOptions& o_;
  ProcessGroup& group_;
  const bool rank0_;
  const std::string host_memory_;
  Timeline timeline_;  // --timeline: rank 0's steps, or every rank's
  c10::Device device_{c10::kCPU};
  ImageDataset train_data_, test_data_;
  std::shared_ptr<Model> model_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<DistributedDataParallel<Model>> ddp_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<LrScheduler> scheduler_;
  std::unique_ptr<DistributedSampler> sampler_;
  std::unique_ptr<PreemptionGuard> guard_;
  std::unique_ptr<CheckpointManager> checkpoints_;
  std::unique_ptr<GradScaler> scaler_;             // --amp
  std::shared_ptr<Model> ema_model_;               // --model-ema: the averaged weights
  std::shared_ptr<ExponentialMovingAverage> ema_;  // ... and their average ("model_ema")
  int64_t skipped_steps_ = 0;                      // --amp: steps the scaler skipped in this run
  int start_epoch_ = 0;
  int64_t resume_step_ = 0;         // the step of start_epoch_ a mid-epoch checkpoint continues at
  bool resume_exact_ = false;       // ... with every rank's generators and loss so far put back
  bool resumed_ = false;            // this run continued from a checkpoint
  double epoch_loss_sum_ = 0;       // this rank's sum of per-sample losses in the current epoch
  int64_t epoch_samples_ = 0;       // and the samples in it
  double stall_seconds_ = 0;        // the current epoch's time in checkpoints so far
  int64_t steps_run_ = 0;           // steps (batches) of this run, for --stop-after-steps
  bool stop_requested_ = false;     // --stop-after-steps reached, or a preemption agreed
  bool stopped_mid_epoch_ = false;  // ... within an epoch, whose checkpoint is written
  int stopped_at_epoch_ = 0;
  int64_t stopped_at_step_ = 0;  // the step of stopped_at_epoch_ the run stopped before
  int64_t epoch_steps_ = 0;      // steps in the current epoch
  int epoch_of_evaluation_ = 0;  // the epoch evaluate() scores
  FaultInjection faults_;        // DDPRUN_INJECT_SIGNAL, for tests
};

}  // namespace

int train(const TrainOptions& options, ProcessGroup& group, const std::string& host_memory) {
  return Run(options, group, host_memory).execute();
}

}  // namespace ddprun::trainer
