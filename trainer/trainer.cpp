// The training loop of ddptrain, as torchvision's classification reference runs it: train_one_epoch,
// lr_scheduler.step(), evaluate, save {"model", "optimizer", "lr_scheduler", "epoch", "args"} on rank 0, plus a
// "ddprun" entry with what an exact resume needs (Python ignores it): the step within the epoch, the sampler's
// position, every rank's random state, the world size and the format version.
#include "trainer/trainer.h"

#include "checkpoint/async_saver.h"
#include "checkpoint/atomic_file.h"
#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/module_state.h"
#include "checkpoint/torch_file.h"
#include "comm/agreement.h"
#include "comm/launch_environment.h"
#include "ddprun/distributed_sampler.h"
#include "trainer/blas_info.h"
#include "trainer/distributed_data_parallel.h"
#include "trainer/fault_injection.h"
#include "trainer/first_difference.h"
#include "trainer/idx_dataset.h"
#include "trainer/lr_scheduler.h"
#include "trainer/metrics.h"
#include "trainer/models.h"
#include "trainer/optimizer.h"
#include "trainer/preemption.h"
#include "trainer/rank_state.h"
#include "trainer/timeline.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

namespace ddprun::trainer {
namespace {

using checkpoint::Value;
using Clock = std::chrono::steady_clock;

// The layout of the "ddprun" entry; a checkpoint from a newer layout is refused rather than misread.
constexpr int64_t kCheckpointFormat = 1;
// --nan-policy skip-step: this many skipped steps in a row mean the run has diverged.
constexpr int kMaxSkippedSteps = 10;
// The largest world a checkpoint can come from.
constexpr int64_t kMaxWorldSize = int64_t{1} << 20;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// A live progress line only makes sense on a terminal. Under mpirun a rank's stdout is a pseudo-terminal even when
// mpirun's own output goes to a file, so ranks started by a launcher follow DDPRUN_PROGRESS (ddprun sets it from
// its own stdout) and otherwise stay quiet.
bool progress_wanted() {
  if (const char* setting = std::getenv("DDPRUN_PROGRESS")) return std::strcmp(setting, "1") == 0;
  return comm::read_launch_environment().launcher.empty() && isatty(STDOUT_FILENO);
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

// The rank's own GPU when LibTorch sees GPUs (comm::choose_device_index: cuda:<local rank>, or cuda:0 when the
// launcher gave each rank its own), else the CPU. A rank without a GPU of its own in a GPU job is an error, not a
// silent CPU rank.
c10::Device pick_device(const comm::LaunchEnvironment& launch, int local_rank, int local_size) {
  if (!torch::cuda::is_available()) return c10::Device(c10::kCPU);
  const int index =
      comm::choose_device_index(launch, local_rank, local_size, static_cast<int>(torch::cuda::device_count()));
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

// "started by mpirun, ddprun restart 1, Slurm requeue 2" as far as the environment tells.
std::string launch_text(const comm::LaunchEnvironment& launch) {
  std::string text = launch.launcher.empty() ? "started by hand" : "started by " + launch.launcher;
  if (launch.ddprun_restarts > 0) text += ", ddprun restart " + std::to_string(launch.ddprun_restarts);
  if (launch.slurm_requeues > 0) text += ", Slurm requeue " + std::to_string(launch.slurm_requeues);
  return text;
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
      << "\ntraining samples " << train_size << "\ntest samples " << test_size << "\n";
  return out.str();
}

// The first line where two fingerprints differ, as "name: A vs B".
std::string first_difference(const std::string& ours, const std::string& theirs) {
  const auto [la, lb] = first_different_lines(ours, theirs);
  if (la.empty() || la.rfind(' ') == std::string::npos || lb.rfind(' ') == std::string::npos) return "the runs differ";
  const size_t cut = la.rfind(' ');
  return la.substr(0, cut) + " is " + la.substr(cut + 1) + " here but " + lb.substr(lb.rfind(' ') + 1) + " on rank 0";
}

Value args_dict(const TrainOptions& o) {
  return Value::dict({{"data_path", o.data_path},
                      {"model", o.model},
                      {"epochs", o.epochs},
                      {"batch_size", o.batch_size},
                      {"lr", o.lr},
                      {"opt", o.opt},
                      {"momentum", o.momentum},
                      {"weight_decay", o.weight_decay},
                      {"lr_scheduler", o.lr_scheduler},
                      {"lr_step_size", o.lr_step_size},
                      {"lr_gamma", o.lr_gamma},
                      {"lr_min", o.lr_min},
                      {"lr_warmup_epochs", o.lr_warmup_epochs},
                      {"lr_warmup_method", o.lr_warmup_method},
                      {"lr_warmup_decay", o.lr_warmup_decay},
                      {"output_dir", o.output_dir},
                      {"resume", o.resume},
                      {"keep_last", o.keep_last},
                      {"save_every_steps", o.save_every_steps},
                      {"async_save", o.async_save},
                      {"on_save_error", o.on_save_error},
                      {"nan_policy", o.nan_policy},
                      {"preempt_signals", o.preempt_signals},
                      {"start_epoch", o.start_epoch},
                      {"seed", o.seed},
                      {"train_limit", o.train_limit},
                      {"test_limit", o.test_limit},
                      {"threads", o.threads}});
}

class Run {
 public:
  Run(const TrainOptions& options, comm::Communicator& comm, std::string host_memory)
      : o_(options),
        comm_(comm),
        rank0_(comm.rank() == 0),
        host_memory_(std::move(host_memory)),
        timeline_(rank0_ ? options.timeline : std::string(), comm.rank()) {}

  TrainOutcome execute() {
    try {
      set_up();
    } catch (const comm::CollectiveFailure& failure) {
      throw SetUpFailure(failure.failed_rank(), failure.what());
    }
    if (start_epoch_ >= o_.epochs) {
      if (rank0_)
        std::printf("ddptrain: nothing to train: the run is at epoch %d and --epochs is %d\n", start_epoch_, o_.epochs);
      return TrainOutcome::Finished;
    }
    for (int epoch = start_epoch_; epoch < o_.epochs; ++epoch) {
      EpochMetrics m;
      m.epoch = epoch;
      m.world_size = comm_.size();
      m.lr = optimizer_->lr();
      m.resumed = epoch == start_epoch_ && resumed_;
      const auto start = Clock::now();
      train_one_epoch(epoch, m, epoch == start_epoch_ ? resume_step_ : 0);
      if (stopped_mid_epoch_) break;  // --stop-after-steps: its checkpoint is written
      scheduler_->step();
      epoch_of_evaluation_ = epoch;
      m.test_acc1 = evaluate();
      m.epoch_seconds = seconds_since(start);
      if (rank0_) {
        std::printf("%s\n", to_text(m, o_.epochs).c_str());
        std::fflush(stdout);
      }
      save_checkpoint(epoch, 0, &m);
      // A signal during evaluation (or the save) stops the run here, at the epoch's end; after the last epoch there
      // is nothing left to stop.
      if (!stop_requested_ && epoch + 1 < o_.epochs && (preempted_by_ = agree_at_boundary(false).signal) != 0) {
        stop_requested_ = true;
        stopped_at_epoch_ = epoch;
        stopped_at_step_ = epoch_steps_;
      }
      if (stop_requested_) break;
    }
    // The last write must land before the job reports success (with --async-save it may still be going).
    comm::run_on_all_ranks(comm_, [&] {
      if (async_saver_) finish_async_save();
      require_a_checkpoint();
    });
    const bool completed = stopped_at_epoch_ == o_.epochs - 1 && stopped_at_step_ == epoch_steps_;
    if (preempted_by_ != 0 && completed) {
      if (rank0_)
        std::printf("ddptrain: %s arrived at the last step of the last epoch: training is complete\n",
                    signal_name(preempted_by_).c_str());
      return TrainOutcome::Finished;
    }
    if (preempted_by_ != 0) {
      if (rank0_) {
        std::printf(
            "ddptrain: preempted by %s: every rank stopped after epoch %d step %lld; %s in %s; exit code %d asks for "
            "a requeue; continue with --resume auto\n",
            signal_name(preempted_by_).c_str(), stopped_at_epoch_, static_cast<long long>(stopped_at_step_),
            last_save_failed_ ? "its checkpoint could not be written (see above): it continues from the previous one"
                              : "checkpoint saved",
            o_.output_dir.c_str(), ddprun::kExitPreempted);
        std::fflush(stdout);
      }
      return TrainOutcome::Preempted;
    }
    if (stop_requested_) {
      if (rank0_)
        std::printf(
            "ddptrain: stopped after %d steps as --stop-after-steps asked; checkpoint saved in %s; continue "
            "with --resume auto\n",
            o_.stop_after_steps, o_.output_dir.c_str());
      return TrainOutcome::Stopped;
    }
    return TrainOutcome::Finished;
  }

 private:
  void set_up() {
    const comm::LaunchEnvironment launch = comm::read_launch_environment();
    comm::run_on_all_ranks(comm_, [&] {
      device_ = pick_device(launch, comm_.local_rank(), comm_.local_size());
      faults_ = FaultInjection::from_environment(comm_.rank());
    });
    const int threads = o_.threads > 0 ? o_.threads : default_thread_count(comm_.local_size());
    at::set_num_threads(threads);
    if (rank0_) {
      const BlasInfo blas = detect_blas();
      std::printf(
          "ddptrain: %d rank(s) over %s (%s), device %s, %d intra-op thread(s) per rank, host memory: %s\n"
          "ddptrain: BLAS: %s%s%s\n",
          comm_.size(), comm_.backend_name().c_str(), launch_text(launch).c_str(), device_.str().c_str(), threads,
          host_memory_.c_str(), blas.name.c_str(),
          blas.library_path.empty() ? "" : (" (" + blas.library_path + ")").c_str(),
          blas.detail.empty() ? "" : (" [" + blas.detail + "]").c_str());
      if (blas.is_reference)
        std::fprintf(stderr,
                     "ddptrain: warning: LibTorch is using the reference BLAS, which is many times slower; install an "
                     "optimized one (apt-get install libopenblas0-openmp)\n");
      std::fflush(stdout);
    }

    // Checkpoints go here after the first epoch: find out now, not after an epoch of training, if they cannot.
    comm::run_on_all_ranks(comm_, [&] {
      if (!rank0_) return;
      create_output_dir();
      check_output_dir_writable();
      have_checkpoint_ = checkpoint_on_disk();
      for (const checkpoint::StaleTemporary& stale : checkpoint::remove_stale_temporaries(o_.output_dir))
        std::printf("ddptrain: removed %s (%.1f MB), a checkpoint write whose writer is gone (killed mid-write)\n",
                    stale.path.c_str(), static_cast<double>(stale.bytes) / 1e6);
    });
    comm::run_on_all_ranks(comm_, [&] {
      try {
        train_data_ = load_idx_dataset(o_.data_path, Split::Train, o_.train_limit);
        test_data_ = load_idx_dataset(o_.data_path, Split::Test, o_.test_limit);
      } catch (const DataError& e) {
        throw std::runtime_error(std::string("cannot load the data set: ") + e.what() +
                                 "; check --data-path (Debian's dataset-fashion-mnist package installs "
                                 "/usr/share/datasets/fashion-mnist)");
      }
    });

    // Different flags, config files or data on different nodes would make the ranks' collectives disagree.
    const std::string fingerprint = run_fingerprint(o_, train_data_.size(), test_data_.size());
    const std::vector<std::string> fingerprints = comm_.allgather_bytes(fingerprint);
    comm::run_on_all_ranks(comm_, [&] {
      if (fingerprint != fingerprints[0])
        throw std::runtime_error(
            "this rank's run differs from rank 0's: " + first_difference(fingerprint, fingerprints[0]) +
            "; give every rank the same flags, config file and data");
    });

    torch::manual_seed(static_cast<uint64_t>(o_.seed));
    model_ = make_model(o_.model);
    model_->to(device_);
    params_ = model_->parameters();
    OptimizerOptions optimizer_options;
    optimizer_options.name = o_.opt;
    optimizer_options.lr = o_.lr;
    optimizer_options.momentum = o_.momentum;
    optimizer_options.weight_decay = o_.weight_decay;
    optimizer_ = make_optimizer(params_, optimizer_options);
    LrScheduleOptions schedule;
    schedule.name = o_.lr_scheduler;
    schedule.epochs = o_.epochs;
    schedule.step_size = o_.lr_step_size;
    schedule.gamma = o_.lr_gamma;
    schedule.lr_min = o_.lr_min;
    schedule.warmup_epochs = o_.lr_warmup_epochs;
    schedule.warmup_method = o_.lr_warmup_method;
    schedule.warmup_decay = o_.lr_warmup_decay;
    scheduler_ = make_lr_schedule(*optimizer_, schedule);
    start_epoch_ = o_.start_epoch;
    map_location_ = o_.map_location.empty() ? checkpoint::MapLocation(device_)
                                            : checkpoint::MapLocation::parse(o_.map_location, device_);
    if (!o_.resume.empty()) resume();
    if (rank0_ && o_.async_save) async_saver_ = std::make_unique<checkpoint::AsyncSaver>();
    const std::vector<int> preempt_signals = parse_signal_list(o_.preempt_signals);
    watch_preemption_signals(preempt_signals);
    watch_preemption_ = !preempt_signals.empty();
    sampler_ = std::make_unique<DistributedSampler>(train_data_.size(), comm_.rank(), comm_.size(), true, o_.seed);

    // Every rank starts from rank 0's weights and buffers (they differ only if a rank was seeded or resumed
    // differently); from here on gradients are averaged in buckets during backward, or for --grad-sync per-param
    // one parameter at a time after it.
    if (o_.grad_sync == "per-param") {
      std::vector<at::Tensor> state = params_;
      for (const at::Tensor& b : model_->buffers()) state.push_back(b);
      at::NoGradGuard no_grad;
      comm_.broadcast(state, 0)->wait();
      return;
    }
    DdpOptions ddp_options;
    ddp_options.bucket_cap_mb = o_.bucket_cap_mb;
    ddp_options.find_unused_parameters = o_.find_unused_parameters;
    ddp_options.compression = parse_grad_compression(o_.grad_compression);
    if (timeline_.enabled()) {
      ddp_options.on_bucket_done = [this](const BucketTiming& t) {
        timeline_.span("all-reduce bucket " + std::to_string(t.bucket), Timeline::kAllReduce, t.ready, t.done,
                       "\"bucket\": " + std::to_string(t.bucket) + ", \"bytes\": " + std::to_string(t.bytes));
      };
    }
    ddp_ = std::make_unique<DistributedDataParallel>(model_, comm_, ddp_options);
  }

  void create_output_dir() const {
    std::error_code ec;
    std::filesystem::create_directories(o_.output_dir, ec);
    if (ec) throw std::runtime_error("cannot create --output-dir '" + o_.output_dir + "': " + ec.message());
  }

  // A folder checkpoints cannot be written to is found now, not after the first epoch (when the failure would also
  // look worth a restart).
  void check_output_dir_writable() const {
    const std::string probe = checkpoint::AtomicFile::temporary_path(o_.output_dir + "/.ddptrain-write-check");
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    const int err = errno;
    if (fd < 0)
      throw std::runtime_error("--output-dir '" + o_.output_dir + "' is not writable (" + std::strerror(err) +
                               "); checkpoints and metrics go there: give a folder this user can write");
    ::close(fd);
    ::unlink(probe.c_str());
  }

  // --resume PATH, or --resume auto: the newest checkpoint in --output-dir that every rank can load
  // (checkpoint.pth, then model_<epoch>.pth from the highest epoch down), with a warning naming each newer file that
  // failed and why; with none there yet, training starts from the beginning.
  void resume() {
    std::string chosen;
    if (o_.resume != "auto") {
      load_checkpoint(o_.resume);
      chosen = o_.resume;
    } else {
      chosen = checkpoint::load_newest(comm_, folder_, "ddptrain", "--output-dir",
                                       [this](const std::string& path) { load_checkpoint(path); });
      if (chosen.empty()) {
        if (rank0_)
          std::printf("ddptrain: --resume auto: no checkpoint in '%s' yet; starting afresh\n", o_.output_dir.c_str());
        return;
      }
    }
    resumed_ = true;
    if (rank0_) {
      std::printf("ddptrain: resumed from %s: continuing at epoch %d%s with lr %.6g%s\n", chosen.c_str(), start_epoch_,
                  resume_step_ > 0 ? (", step " + std::to_string(resume_step_)).c_str() : "", optimizer_->lr(),
                  o_.map_location.empty() ? "" : (" (map_location: " + map_location_.to_string() + ")").c_str());
      std::fflush(stdout);
    }
  }

  // Model, optimizer, schedule and epoch from `path` on every rank, each onto its own device; CollectiveFailure on
  // every rank when any rank cannot.
  void load_checkpoint(const std::string& path) {
    // --resume-broadcast: rank 0 reads the file's bytes and every rank unpickles them from memory.
    at::Tensor file_bytes;
    if (o_.resume_broadcast) file_bytes = broadcast_file(path);
    comm::run_on_all_ranks(comm_, [&] {
      const std::string where = "--resume '" + path + "': ";
      try {
        const Value saved = file_bytes.defined() ? checkpoint::load_from_memory(file_bytes.data_ptr(),
                                                                                static_cast<size_t>(file_bytes.numel()),
                                                                                path, map_location_)
                                                 : checkpoint::load(path, map_location_);
        if (!saved.is_mapping())
          throw std::runtime_error(std::string("holds a ") + saved.kind_name() +
                                   ", not a training checkpoint (a dict with model, optimizer, lr_scheduler, epoch)");
        for (const char* key : {"model", "optimizer", "lr_scheduler", "epoch"}) {
          if (!saved.find(key))
            throw std::runtime_error(std::string("is not a training checkpoint: it has no '") + key +
                                     "' entry (expected model, optimizer, lr_scheduler, epoch)");
        }
        checkpoint::load_module_state_dict(*model_, saved.at("model"));
        refuse_non_finite_model();
        optimizer_->load_state_dict(saved.at("optimizer"));
        scheduler_->load_state_dict(saved.at("lr_scheduler"));
        start_epoch_ =
            static_cast<int>(saved.at("epoch").to_int_in(-1, kMaxEpochs - 1, "its 'epoch' (the last finished one)")) +
            1;
        load_resume_position(saved);
      } catch (const checkpoint::CheckpointError& e) {
        throw std::runtime_error(e.what());
      } catch (const std::exception& e) {
        throw std::runtime_error(where + e.what());
      }
    });
  }

  // The weights and buffers of a checkpoint whose run had diverged are refused (--resume auto then tries the next
  // older file), rather than training on from NaN.
  void refuse_non_finite_model() const {
    auto check = [](const std::string& name, const at::Tensor& t) {
      if (t.is_floating_point() && !at::isfinite(t).all().item<bool>())
        throw std::runtime_error("its model entry '" + name +
                                 "' holds NaN or inf values: the run that saved it had diverged; resume from an "
                                 "earlier checkpoint");
    };
    for (const auto& item : model_->named_parameters()) check(item.key(), item.value());
    for (const auto& item : model_->named_buffers()) check(item.key(), item.value());
  }

  // Rank 0 reads `path` whole, straight into the buffer it broadcasts; every rank gets its bytes (in pieces of at
  // most 256 MiB, within MPI's counts).
  at::Tensor broadcast_file(const std::string& path) {
    at::Tensor size = at::zeros({1}, at::kLong);
    at::Tensor data;
    comm::run_on_all_ranks(comm_, [&] {
      if (!rank0_) return;
      std::error_code ec;
      if (std::filesystem::is_directory(path, ec))
        throw std::runtime_error("cannot read checkpoint '" + path + "': " + std::strerror(EISDIR));
      std::ifstream in(path, std::ios::binary | std::ios::ate);
      const std::streamoff bytes = in ? static_cast<std::streamoff>(in.tellg()) : -1;
      if (bytes < 0) throw std::runtime_error("cannot read checkpoint '" + path + "': " + std::strerror(errno));
      data = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
      in.seekg(0);
      if (bytes > 0 && !in.read(static_cast<char*>(data.data_ptr()), bytes))
        throw std::runtime_error("cannot read checkpoint '" + path + "': " + std::strerror(errno));
      size[0] = static_cast<int64_t>(bytes);
    });
    comm_.broadcast(size, 0)->wait();
    if (!rank0_) data = at::empty({size.item<int64_t>()}, at::kByte);
    constexpr int64_t kPiece = int64_t{256} << 20;
    for (int64_t begin = 0; begin < data.numel(); begin += kPiece) {
      at::Tensor piece = data.narrow(0, begin, std::min(kPiece, data.numel() - begin));
      comm_.broadcast(piece, 0)->wait();
    }
    return data;
  }

  // Where in the epoch to go on, from the "ddprun" entry (none: the checkpoint is from the end of an epoch, as
  // Python's torchvision writes them). Same world size and batch size: the saved step and this rank's random
  // state, for an exact resume. Otherwise the data position is re-derived (the same number of samples seen) and
  // the random streams start afresh, and rank 0 says so.
  void load_resume_position(const Value& saved) {
    resume_step_ = 0;
    resume_rank_state_.reset();
    const Value* extra = saved.find("ddprun");
    if (extra == nullptr) return;
    // Every number is read with the range it can have: a file with epoch 2^32, a negative sampler position or a
    // world of 0 is refused, not trained from (before, they gave epoch 1, extra steps, or a silent wrong step).
    const int64_t format = extra->at("format_version").to_int_in(1, INT64_MAX, "its format_version");
    if (format > kCheckpointFormat)
      throw std::runtime_error("was written by a newer ddprun (checkpoint format " + std::to_string(format) +
                               ", this one reads up to " + std::to_string(kCheckpointFormat) + "); update ddptrain");
    const int64_t world = extra->at("world_size").to_int_in(1, kMaxWorldSize, "its world_size");
    const int64_t batch = extra->at("batch_size").to_int_in(1, INT32_MAX, "its batch_size");
    const Value& sampler = extra->at("sampler");
    const int64_t sampler_epoch = sampler.at("epoch").to_int_in(0, kMaxEpochs, "its sampler's epoch");
    if (sampler_epoch != start_epoch_)
      throw std::runtime_error("is inconsistent: its sampler is at epoch " + std::to_string(sampler_epoch) +
                               " but its 'epoch' entry says " + std::to_string(start_epoch_ - 1) + " was the last");
    // Samples per rank already trained in the epoch: at most a rank's share of the epoch in the run that saved it
    // (the sampler pads the data to a multiple of the world size).
    const int64_t per_rank = (train_data_.size() + world - 1) / world;
    const int64_t position =
        sampler.at("position")
            .to_int_in(0, per_rank,
                       "its sampler's position (samples each of its " + std::to_string(world) + " ranks trained)");
    const int64_t step = extra->at("step_in_epoch").to_int_in(0, (per_rank + batch - 1) / batch, "its step_in_epoch");
    if (position != step * batch)
      throw std::runtime_error("is inconsistent: its sampler's position " + std::to_string(position) + " is not " +
                               "its step_in_epoch " + std::to_string(step) + " times its batch_size " +
                               std::to_string(batch));
    const int64_t seed = sampler.at("seed").to_int_in(0, INT64_MAX, "its sampler's seed");
    const Value& ranks = extra->at("rank_states");
    if (static_cast<int64_t>(ranks.items().size()) != world)
      throw std::runtime_error("holds " + std::to_string(ranks.items().size()) + " rank states for " +
                               std::to_string(world) + " ranks");
    if (world == comm_.size() && batch == o_.batch_size) {
      resume_step_ = static_cast<int>(step);
      resume_rank_state_ = from_value(ranks.items()[static_cast<size_t>(comm_.rank())]);
      if (seed != o_.seed && rank0_)
        std::fprintf(stderr,
                     "ddptrain: warning: the checkpoint's data order was drawn with --seed %lld, this run has %lld: "
                     "the rest of the epoch sees a different order\n",
                     static_cast<long long>(seed), static_cast<long long>(o_.seed));
      return;
    }
    // The same number of samples seen across all ranks, in whole steps of this run.
    resume_step_ = static_cast<int>(position * world / (int64_t{o_.batch_size} * comm_.size()));
    if (rank0_)
      std::printf(
          "ddptrain: the checkpoint was written by %lld rank(s) with --batch-size %lld; this run has %d with %d: the "
          "data order and the random streams are re-derived for this run, and epoch %d continues at step %d (the same "
          "number of samples seen); training continues correctly but not bit-identically to an uninterrupted run\n",
          static_cast<long long>(world), static_cast<long long>(batch), comm_.size(), o_.batch_size, start_epoch_,
          resume_step_);
  }

  // Trains steps [first_step, steps) of `epoch`; a first_step past 0 continues a mid-epoch checkpoint.
  void train_one_epoch(int epoch, EpochMetrics& m, int64_t first_step) {
    model_->train();
    sampler_->set_epoch(epoch);
    stall_seconds_ = 0;
    // Dropout draws from the global generator: seed it per (seed, rank, epoch) so that an epoch's randomness
    // does not depend on how the run got there; a mid-epoch checkpoint puts back the states it saved.
    torch::manual_seed(static_cast<uint64_t>(o_.seed) * 1000003ULL + static_cast<uint64_t>(comm_.rank()) * 7919ULL +
                       static_cast<uint64_t>(epoch));
    epoch_loss_sum_ = 0;
    epoch_samples_ = 0;
    if (first_step > 0 && resume_rank_state_) {
      comm::run_on_all_ranks(comm_, [&] { restore_rng(*resume_rank_state_, device_); });
      epoch_loss_sum_ = resume_rank_state_->loss_sum;
      epoch_samples_ = resume_rank_state_->samples;
    }
    resume_rank_state_.reset();
    const at::Tensor order = sampler_->indices();
    const int64_t samples = order.size(0);
    const int64_t steps = (samples + o_.batch_size - 1) / o_.batch_size;
    epoch_steps_ = steps;
    first_step = std::min(first_step, steps);
    const int64_t samples_before = epoch_samples_;
    ProgressLine progress(rank0_ && progress_wanted());
    const auto start = Clock::now();
    for (int64_t step = first_step; step < steps; ++step) {
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
      if (ddp_) ddp_->before_forward();
      at::Tensor loss = at::nll_loss(model_->forward(images), labels);
      const auto backward_start = Clock::now();
      {
        std::optional<DistributedDataParallel::NoSync> no_sync;
        if (!steps_now && ddp_) no_sync.emplace(*ddp_);
        (window > 1 ? loss / static_cast<double>(window) : loss).backward();
      }
      const auto backward_end = Clock::now();
      if (steps_now && !ddp_) average_gradients_per_parameter();
      const double loss_value = loss.item<double>();
      window_non_finite_ = window_non_finite_ || !std::isfinite(loss_value);
      faults_.after_step(epoch, step + 1);
      // A step boundary: before the update, the ranks agree on what any of them saw (one small all-reduce): a NaN or
      // inf loss (the update would poison every rank's weights) and a preemption signal (acted on after the update).
      StepAgreement agreed;
      bool update = steps_now;
      if (steps_now) {
        agreed = agree_at_boundary(window_non_finite_);
        window_non_finite_ = false;
        if (agreed.non_finite_rank >= 0) {
          update = false;
          on_non_finite_loss(agreed.non_finite_rank, epoch, step);
        } else {
          non_finite_in_a_row_ = 0;
        }
      }
      const auto step_start = Clock::now();
      if (update) optimizer_->step();
      if (timeline_.enabled()) {
        const std::string where = "\"epoch\": " + std::to_string(epoch) + ", \"step\": " + std::to_string(step);
        timeline_.span("forward", Timeline::kCompute, forward_start, backward_start, where);
        timeline_.span("backward", Timeline::kCompute, backward_start, backward_end, where);
        if (steps_now && !ddp_)  // --grad-sync per-param: its all-reduces, after backward
          timeline_.span("all-reduce per parameter", Timeline::kAllReduce, backward_end, step_start, where);
        if (update) timeline_.span("optimizer step", Timeline::kCompute, step_start, Clock::now(), where);
      }
      if (std::isfinite(loss_value)) {  // a skipped step's loss stays out of the epoch's mean
        epoch_loss_sum_ += loss_value * static_cast<double>(indices.size(0));
        epoch_samples_ += indices.size(0);
      }
      progress.update(epoch, step, steps, epoch_loss_sum_ / static_cast<double>(std::max<int64_t>(epoch_samples_, 1)),
                      static_cast<double>((epoch_samples_ - samples_before) * comm_.size()) / seconds_since(start));
      // --stop-after-steps N: this run's N-th step is its last (at the epoch's end, the epoch finishes as usual).
      ++steps_run_;
      // Stop here if --stop-after-steps is reached or a preemption signal reached any rank.
      if (steps_now && ((o_.stop_after_steps > 0 && steps_run_ >= o_.stop_after_steps) || agreed.signal != 0)) {
        if (agreed.signal != 0) preempted_by_ = agreed.signal;
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
    comm_.allreduce(totals, comm::ReduceOp::Sum)->wait();
    at::Tensor slowest = at::zeros({1}, at::kDouble);
    slowest[0] = seconds_since(start);
    comm_.allreduce(slowest, comm::ReduceOp::Max)->wait();
    m.train_loss = totals[0].item<double>() / totals[1].item<double>();
    m.images_per_sec = totals[2].item<double>() / slowest[0].item<double>();
  }

  // What the ranks agree on at a step boundary: one all-reduce (max) of [the preemption signal this rank got, 1 +
  // this rank if its loss was not finite], so that every rank decides alike at the same step.
  struct StepAgreement {
    int signal = 0;            // the signal any rank got (the highest number), or 0
    int non_finite_rank = -1;  // the highest rank whose loss was NaN or inf, or -1
  };
  StepAgreement agree_at_boundary(bool non_finite_loss) {
    int32_t* flags = boundary_flags_.data_ptr<int32_t>();
    flags[0] = watch_preemption_ ? preemption_signal() : 0;
    flags[1] = non_finite_loss ? comm_.rank() + 1 : 0;
    comm_.allreduce(boundary_flags_, comm::ReduceOp::Max)->wait();
    return {flags[0], flags[1] - 1};
  }

  // --nan-policy: stop every rank before the update (the last checkpoint stays as it is), or skip the update and go
  // on, up to kMaxSkippedSteps in a row. Runs on every rank alike.
  void on_non_finite_loss(int rank, int epoch, int64_t step) {
    const std::string where = "the loss was NaN or inf on rank " + std::to_string(rank) + " at epoch " +
                              std::to_string(epoch) + " step " + std::to_string(step);
    if (o_.nan_policy == "skip-step") {
      optimizer_->zero_grad();
      if (++non_finite_in_a_row_ < kMaxSkippedSteps) {
        if (rank0_) {
          std::fprintf(stderr,
                       "ddptrain: warning: %s; every rank skipped that step's update (--nan-policy skip-step)\n",
                       where.c_str());
          std::fflush(stderr);
        }
        return;
      }
      throw DivergedFailure(rank, where + ", the " + std::to_string(kMaxSkippedSteps) +
                                      "th step in a row: training has diverged; every rank stopped (" +
                                      (have_checkpoint_ ? "the last checkpoint is kept" : "no checkpoint yet") +
                                      "); lower --lr");
    }
    const std::string kept = have_checkpoint_ ? "the last checkpoint is kept" : "no checkpoint was written yet";
    throw DivergedFailure(rank, where + ": every rank stopped before that step's update; " + kept + " (--lr " +
                                    exact_text(o_.lr) + "); lower --lr, or use --nan-policy skip-step");
  }

  // --grad-sync per-param: pytorch/examples' cpp/distributed baseline once backward has finished: one all-reduce (sum)
  // per parameter, all issued, then all waited for, then each gradient divided by the world size. A parameter
  // without a gradient contributes zeros, so every rank issues the same collectives.
  void average_gradients_per_parameter() {
    std::vector<comm::WorkHandle> works;
    for (at::Tensor& p : params_) {
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      works.push_back(comm_.allreduce(p.grad(), comm::ReduceOp::Sum));
    }
    for (auto& work : works) work->wait();
    at::NoGradGuard no_grad;
    for (at::Tensor& p : params_) p.mutable_grad().div_(static_cast<double>(comm_.size()));
  }

  // Top-1 accuracy in percent over the whole test split, each rank scoring every world_size-th sample (no padding,
  // so each sample counts once).
  double evaluate() {
    model_->eval();
    at::NoGradGuard no_grad;
    const at::Tensor mine = at::arange(comm_.rank(), test_data_.size(), comm_.size(), at::kLong);
    int64_t correct = 0;
    for (int64_t begin = 0; begin < mine.size(0); begin += o_.batch_size) {
      const at::Tensor indices = mine.narrow(0, begin, std::min<int64_t>(o_.batch_size, mine.size(0) - begin));
      auto [images, labels] = make_batch(test_data_, indices);
      const at::Tensor predicted = model_->forward(images.to(device_)).argmax(1);
      correct += predicted.eq(labels.to(device_)).sum().item<int64_t>();
      faults_.during_evaluation(epoch_of_evaluation_);
    }
    at::Tensor counts = at::zeros({2}, at::kLong);
    counts[0] = correct;
    counts[1] = mine.size(0);
    comm_.allreduce(counts, comm::ReduceOp::Sum)->wait();
    return 100.0 * static_cast<double>(counts[0].item<int64_t>()) / static_cast<double>(counts[1].item<int64_t>());
  }

  // Every rank sends rank 0 its random state and loss so far; rank 0 writes checkpoint.pth (and, at the end of an
  // epoch, model_<epoch>.pth) and the epoch's metrics; all ranks learn whether that worked before going on.
  // next_step 0: the end of `epoch`; otherwise the step of `epoch` to continue at.
  void save_checkpoint(int epoch, int64_t next_step, EpochMetrics* m) {
    const auto start = Clock::now();
    const std::vector<std::string> states =
        comm_.allgather_bytes(encode(capture_rank_state(device_, epoch_loss_sum_, epoch_samples_)));
    comm::run_on_all_ranks(comm_, [&] {
      if (!rank0_) return;
      create_output_dir();
      std::vector<std::string> paths;
      if (next_step == 0) paths.push_back(folder_.for_epoch(epoch));
      // Its own file, not a link to model_<epoch>.pth: a later torch.save over checkpoint.pth (as torchvision's
      // train.py does in the same folder) must not rewrite the per-epoch file.
      paths.push_back(folder_.newest());
      write_checkpoint(checkpoint_object(epoch, next_step, states), paths, next_step == 0);
      if (m != nullptr) {
        m->checkpoint_stall_seconds = stall_seconds_ + seconds_since(start);
        append_line(o_.output_dir + "/metrics.jsonl", to_json(*m));
        timeline_.write();  // the steps so far, rewritten after each epoch
      }
    });
    stall_seconds_ += seconds_since(start);
  }

  Value checkpoint_object(int epoch, int64_t next_step, const std::vector<std::string>& states) const {
    Value ranks = Value::list();
    for (const std::string& state : states) ranks.append(to_value(decode(state)));
    const int64_t next_epoch = next_step == 0 ? epoch + 1 : epoch;
    const Value extra = Value::dict(
        {{"format_version", kCheckpointFormat},
         {"world_size", comm_.size()},
         {"batch_size", o_.batch_size},
         {"step_in_epoch", next_step},
         {"sampler",
          Value::dict(
              {{"seed", o_.seed}, {"epoch", next_epoch}, {"position", next_step * o_.batch_size}, {"shuffle", true}})},
         {"rank_states", ranks}});
    // "epoch" is the last finished epoch, as torchvision's train.py reads it (it resumes at epoch + 1).
    return Value::dict({{"model", checkpoint::module_state_dict(*model_)},
                        {"optimizer", optimizer_->state_dict()},
                        {"lr_scheduler", scheduler_->state_dict()},
                        {"epoch", next_epoch - 1},
                        {"args", args_dict(o_)},
                        {"ddprun", extra}});
  }

  // Rank 0: saves (or, with --async-save, snapshots and queues) `object` to `paths`; a write error stops the job or,
  // with --on-save-error continue, is a warning.
  void write_checkpoint(const Value& object, const std::vector<std::string>& paths, bool per_epoch) {
    auto after_saved = [this, per_epoch] {  // on the saver's thread with --async-save
      have_checkpoint_ = true;
      last_save_failed_ = false;
      if (per_epoch) folder_.keep_last(o_.keep_last, "ddptrain");
    };
    if (async_saver_) {
      finish_async_save();  // the previous write: it must land before the next one starts
      async_saver_->save(object, paths, after_saved);
      return;
    }
    try {
      checkpoint::save_as(object, paths);
      after_saved();
    } catch (const checkpoint::CheckpointError& e) {
      report_save_error(e);
    }
  }

  void finish_async_save() {
    try {
      async_saver_->wait();
    } catch (const checkpoint::CheckpointError& e) {
      report_save_error(e);
    }
  }

  // Rank 0: whether the folder holds a checkpoint file (checkpoint.pth or model_<epoch>.pth), from this run or before.
  bool checkpoint_on_disk() const {
    for (const std::string& path : folder_.newest_first()) {
      std::error_code ec;
      if (std::filesystem::is_regular_file(path, ec)) return true;
    }
    return false;
  }

  void report_save_error(const checkpoint::CheckpointError& e) {
    last_save_failed_ = true;
    have_checkpoint_ = have_checkpoint_ || checkpoint_on_disk();  // save_as keeps the files it committed
    const std::string previous = have_checkpoint_ ? "the previous checkpoint is intact" : "there is no checkpoint yet";
    if (o_.on_save_error == "continue") {
      std::fprintf(stderr,
                   "ddptrain: warning: %s; training continues without this checkpoint (--on-save-error "
                   "continue); %s\n",
                   e.what(), previous.c_str());
      std::fflush(stderr);
      return;
    }
    throw std::runtime_error(std::string(e.what()) + "; " + previous +
                             ": fix the disk or folder and resume with --resume auto (--on-save-error continue trains "
                             "on without saving)");
  }

  // --on-save-error continue: a run that ends with no checkpoint on disk at all did not succeed (nothing of it can be
  // resumed); rank 0's check, in the run_on_all_ranks at the end.
  void require_a_checkpoint() const {
    if (!rank0_ || have_checkpoint_) return;
    throw std::runtime_error(
        "no checkpoint could be written in this run (see the warnings above) and there was none "
        "before: nothing of it can be resumed; fix the disk or folder '" +
        o_.output_dir + "'");
  }

  const TrainOptions& o_;
  const checkpoint::CheckpointFolder folder_{o_.output_dir};
  comm::Communicator& comm_;
  const bool rank0_;
  const std::string host_memory_;
  Timeline timeline_;  // --timeline: rank 0's steps
  c10::Device device_{c10::kCPU};
  ImageDataset train_data_, test_data_;
  std::shared_ptr<Model> model_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<DistributedDataParallel> ddp_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<LrSchedule> scheduler_;
  std::unique_ptr<DistributedSampler> sampler_;
  checkpoint::MapLocation map_location_;
  std::unique_ptr<checkpoint::AsyncSaver> async_saver_;  // rank 0, --async-save
  int start_epoch_ = 0;
  int resume_step_ = 0;                         // the step of start_epoch_ a mid-epoch checkpoint continues at
  std::optional<RankState> resume_rank_state_;  // this rank's random state and loss from that checkpoint
  double epoch_loss_sum_ = 0;                   // this rank's sum of per-sample losses in the current epoch
  int64_t epoch_samples_ = 0;                   // and the samples in it
  double stall_seconds_ = 0;                    // the current epoch's time in checkpoints so far
  int64_t steps_run_ = 0;                       // steps (batches) of this run, for --stop-after-steps
  bool stop_requested_ = false;                 // --stop-after-steps reached
  bool stopped_mid_epoch_ = false;              // ... within an epoch, whose checkpoint is written
  bool watch_preemption_ = false;               // --preempt-signals is not none
  std::atomic<bool> have_checkpoint_{false};    // rank 0: a checkpoint of this run is on disk (or was, from before)
  std::atomic<bool> last_save_failed_{false};   // rank 0: the latest save failed (--on-save-error continue)
  at::Tensor boundary_flags_ = at::zeros({2}, at::kInt);  // agree_at_boundary's all-reduce
  bool window_non_finite_ = false;                        // a NaN/inf loss in the current accumulation window
  int non_finite_in_a_row_ = 0;                           // steps skipped in a row (--nan-policy skip-step)
  int preempted_by_ = 0;  // the signal all ranks agreed on (the highest number any rank received), or 0
  int stopped_at_epoch_ = 0;
  int64_t stopped_at_step_ = 0;  // the step of stopped_at_epoch_ the run stopped before
  int64_t epoch_steps_ = 0;      // steps in the current epoch
  bool resumed_ = false;         // this run continued from a checkpoint
  int epoch_of_evaluation_ = 0;  // the epoch evaluate() scores
  FaultInjection faults_;        // DDPRUN_INJECT_SIGNAL, for tests
};

}  // namespace

TrainOutcome train(const TrainOptions& options, comm::Communicator& comm, const std::string& host_memory) {
  return Run(options, comm, host_memory).execute();
}

}  // namespace ddprun::trainer
