// The training loop of ddptrain, as torchvision's classification reference runs it: train_one_epoch,
// lr_scheduler.step(), evaluate, save {"model", "optimizer", "lr_scheduler", "epoch", "args"} on rank 0.
#include "trainer/trainer.h"

#include "checkpoint/module_state.h"
#include "checkpoint/torch_file.h"
#include "comm/agreement.h"
#include "trainer/blas_info.h"
#include "trainer/distributed_sampler.h"
#include "trainer/idx_dataset.h"
#include "trainer/metrics.h"
#include "trainer/models.h"
#include "trainer/sgd.h"
#include "trainer/step_lr.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/cuda.h>
#include <torch/utils.h>

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace ddprun::trainer {
namespace {

using checkpoint::Value;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// A live progress line only makes sense on a terminal. Under mpirun a rank's stdout is a pseudo-terminal even when
// mpirun's own output goes to a file, so ranks started by a launcher follow DDPRUN_PROGRESS (ddprun sets it from
// its own stdout) and otherwise stay quiet.
bool progress_wanted() {
  if (const char* setting = std::getenv("DDPRUN_PROGRESS")) return std::strcmp(setting, "1") == 0;
  const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_RANK") || std::getenv("SLURM_PROCID");
  return !launched && isatty(STDOUT_FILENO);
}

int cores_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
}

c10::Device pick_device(int local_rank) {
  if (torch::cuda::is_available() && local_rank < static_cast<int>(torch::cuda::device_count()))
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
  return c10::Device(c10::kCPU);
}

Value args_dict(const TrainOptions& o) {
  return Value::dict({{"data_path", o.data_path},
                      {"model", o.model},
                      {"epochs", o.epochs},
                      {"batch_size", o.batch_size},
                      {"lr", o.lr},
                      {"momentum", o.momentum},
                      {"weight_decay", o.weight_decay},
                      {"lr_step_size", o.lr_step_size},
                      {"lr_gamma", o.lr_gamma},
                      {"output_dir", o.output_dir},
                      {"resume", o.resume},
                      {"start_epoch", o.start_epoch},
                      {"seed", o.seed},
                      {"train_limit", o.train_limit},
                      {"test_limit", o.test_limit},
                      {"threads", o.threads}});
}

// Averages every parameter's gradient over all ranks in one all-reduce of a flat buffer (the simple, correct
// version; trainer's bucketed engine overlaps this with backward). A parameter without a gradient counts as zero.
void average_gradients(const std::vector<at::Tensor>& params, comm::Communicator& comm) {
  std::vector<at::Tensor> flat_grads;
  flat_grads.reserve(params.size());
  for (const at::Tensor& p : params)
    flat_grads.push_back(p.grad().defined() ? p.grad().reshape(-1) : at::zeros({p.numel()}, p.options()));
  at::Tensor flat = at::cat(flat_grads);
  comm.allreduce(flat, comm::ReduceOp::Average);
  int64_t offset = 0;
  for (const at::Tensor& p : params) {
    at::Tensor slice = flat.narrow(0, offset, p.numel()).view_as(p);
    if (p.grad().defined()) {
      p.mutable_grad().copy_(slice);
    } else {
      p.mutable_grad() = slice.clone();
    }
    offset += p.numel();
  }
}

// Makes `alias` name the same file as `target` (a hard link swapped in by rename, so readers of `alias` see the old
// or the new file, never a partial one); falls back to writing `object` again where hard links are unsupported.
void publish_alias(const std::string& target, const std::string& alias, const Value& object) {
  const std::string temporary = alias + ".link." + std::to_string(getpid());
  ::unlink(temporary.c_str());
  if (::link(target.c_str(), temporary.c_str()) == 0) {
    if (::rename(temporary.c_str(), alias.c_str()) != 0) {
      const int err = errno;
      ::unlink(temporary.c_str());
      throw std::runtime_error("cannot rename '" + temporary + "' to '" + alias + "': " + std::strerror(err));
    }
    const std::string folder = std::filesystem::path(alias).parent_path().string();
    const int fd = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    return;
  }
  checkpoint::save(object, alias);
}

class Run {
 public:
  Run(const TrainOptions& options, comm::Communicator& comm, std::string host_memory)
      : o_(options),
        comm_(comm),
        rank0_(comm.rank() == 0),
        device_(pick_device(comm.local_rank())),
        host_memory_(std::move(host_memory)) {}

  void execute() {
    set_up();
    if (start_epoch_ >= o_.epochs) {
      if (rank0_)
        std::printf("ddptrain: nothing to train: the run is at epoch %d and --epochs is %d\n", start_epoch_, o_.epochs);
      return;
    }
    for (int epoch = start_epoch_; epoch < o_.epochs; ++epoch) {
      EpochMetrics m;
      m.epoch = epoch;
      m.world_size = comm_.size();
      m.lr = sgd_->lr();
      const auto start = Clock::now();
      train_one_epoch(epoch, m);
      sgd_->set_lr(scheduler_->step());
      m.test_acc1 = evaluate();
      m.epoch_seconds = seconds_since(start);
      if (rank0_) {
        std::printf("%s\n", to_text(m, o_.epochs).c_str());
        std::fflush(stdout);
      }
      save_checkpoint(epoch, m);
    }
  }

 private:
  void set_up() {
    const int threads = o_.threads > 0 ? o_.threads : std::max(1, cores_available() / comm_.local_size());
    at::set_num_threads(threads);
    if (rank0_) {
      const BlasInfo blas = detect_blas();
      std::printf(
          "ddptrain: %d rank(s) over %s, device %s, %d intra-op thread(s) per rank, host memory: %s\n"
          "ddptrain: BLAS: %s%s%s\n",
          comm_.size(), comm_.backend_name().c_str(), device_.str().c_str(), threads, host_memory_.c_str(),
          blas.name.c_str(), blas.library_path.empty() ? "" : (" (" + blas.library_path + ")").c_str(),
          blas.detail.empty() ? "" : (" [" + blas.detail + "]").c_str());
      if (blas.is_reference)
        std::fprintf(stderr,
                     "ddptrain: warning: LibTorch is using the reference BLAS, which is 10-17x slower; install an "
                     "optimized one (apt-get install libopenblas0-openmp)\n");
      std::fflush(stdout);
    }

    // Checkpoints go here after the first epoch: find out now, not after an epoch of training, if they cannot.
    comm::run_on_all_ranks(comm_, [&] {
      if (rank0_) create_output_dir();
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

    torch::manual_seed(static_cast<uint64_t>(o_.seed));
    model_ = make_model(o_.model);
    model_->to(device_);
    params_ = model_->parameters();
    SgdOptions sgd_options;
    sgd_options.lr = o_.lr;
    sgd_options.momentum = o_.momentum;
    sgd_options.weight_decay = o_.weight_decay;
    sgd_ = std::make_unique<Sgd>(params_, sgd_options);
    scheduler_ = std::make_unique<StepLr>(o_.lr, o_.lr_step_size, o_.lr_gamma);
    start_epoch_ = o_.start_epoch;
    if (!o_.resume.empty()) resume();

    // Every rank starts from rank 0's weights (they differ only if a rank was seeded or resumed differently).
    std::vector<at::Tensor> state;
    for (const auto& p : model_->parameters()) state.push_back(p.detach());
    for (const auto& b : model_->buffers()) state.push_back(b.detach());
    comm_.broadcast(state, 0);

    sampler_ = std::make_unique<DistributedSampler>(train_data_.size(), comm_.rank(), comm_.size(), true, o_.seed);
  }

  void create_output_dir() const {
    std::error_code ec;
    std::filesystem::create_directories(o_.output_dir, ec);
    if (ec) throw std::runtime_error("cannot create --output-dir '" + o_.output_dir + "': " + ec.message());
  }

  void resume() {
    comm::run_on_all_ranks(comm_, [&] {
      const std::string where = "--resume '" + o_.resume + "': ";
      try {
        const Value saved = checkpoint::load(o_.resume, device_);
        if (!saved.is_mapping())
          throw std::runtime_error(std::string("holds a ") + saved.kind_name() +
                                   ", not a training checkpoint (a dict with model, optimizer, lr_scheduler, epoch)");
        for (const char* key : {"model", "optimizer", "lr_scheduler", "epoch"}) {
          if (!saved.find(key))
            throw std::runtime_error(std::string("is not a training checkpoint: it has no '") + key +
                                     "' entry (expected model, optimizer, lr_scheduler, epoch)");
        }
        checkpoint::load_module_state_dict(*model_, saved.at("model"));
        sgd_->load_state_dict(saved.at("optimizer"));
        scheduler_->load_state_dict(saved.at("lr_scheduler"));
        start_epoch_ = static_cast<int>(saved.at("epoch").to_int()) + 1;
      } catch (const checkpoint::CheckpointError& e) {
        throw std::runtime_error(e.what());
      } catch (const std::exception& e) {
        throw std::runtime_error(where + e.what());
      }
    });
    if (rank0_) {
      std::printf("ddptrain: resumed from %s: continuing at epoch %d with lr %.6g\n", o_.resume.c_str(), start_epoch_,
                  sgd_->lr());
      std::fflush(stdout);
    }
  }

  void train_one_epoch(int epoch, EpochMetrics& m) {
    model_->train();
    sampler_->set_epoch(epoch);
    // Dropout draws from the global generator: seed it per (seed, rank, epoch) so that an epoch's randomness
    // does not depend on how the run got there (a resume starts at an epoch boundary).
    torch::manual_seed(static_cast<uint64_t>(o_.seed) * 1000003ULL + static_cast<uint64_t>(comm_.rank()) * 7919ULL +
                       static_cast<uint64_t>(epoch));
    const at::Tensor order = sampler_->indices();
    const int64_t samples = order.size(0);
    const int64_t steps = (samples + o_.batch_size - 1) / o_.batch_size;
    ProgressLine progress(rank0_ && progress_wanted());
    double loss_sum = 0;
    const auto start = Clock::now();
    for (int64_t step = 0; step < steps; ++step) {
      const int64_t begin = step * o_.batch_size;
      const at::Tensor indices = order.narrow(0, begin, std::min<int64_t>(o_.batch_size, samples - begin));
      auto [images, labels] = make_batch(train_data_, indices);
      images = images.to(device_);
      labels = labels.to(device_);
      sgd_->zero_grad();
      at::Tensor loss = at::nll_loss(model_->forward(images), labels);
      loss.backward();
      average_gradients(params_, comm_);
      sgd_->step();
      loss_sum += loss.item<double>() * static_cast<double>(indices.size(0));
      progress.update(epoch, step, steps, loss_sum / static_cast<double>(begin + indices.size(0)),
                      static_cast<double>((begin + indices.size(0)) * comm_.size()) / seconds_since(start));
    }
    progress.finish();
    at::Tensor totals = at::zeros({2}, at::kDouble);
    totals[0] = loss_sum;
    totals[1] = static_cast<double>(samples);
    comm_.allreduce(totals, comm::ReduceOp::Sum);
    at::Tensor slowest = at::zeros({1}, at::kDouble);
    slowest[0] = seconds_since(start);
    comm_.allreduce(slowest, comm::ReduceOp::Max);
    m.train_loss = totals[0].item<double>() / totals[1].item<double>();
    m.images_per_sec = totals[1].item<double>() / slowest[0].item<double>();
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
    }
    at::Tensor counts = at::zeros({2}, at::kLong);
    counts[0] = correct;
    counts[1] = mine.size(0);
    comm_.allreduce(counts, comm::ReduceOp::Sum);
    return 100.0 * static_cast<double>(counts[0].item<int64_t>()) / static_cast<double>(counts[1].item<int64_t>());
  }

  void save_checkpoint(int epoch, const EpochMetrics& m) {
    comm::run_on_all_ranks(comm_, [&] {
      if (!rank0_) return;
      create_output_dir();
      const Value object = Value::dict({{"model", checkpoint::module_state_dict(*model_)},
                                        {"optimizer", sgd_->state_dict()},
                                        {"lr_scheduler", scheduler_->state_dict()},
                                        {"epoch", static_cast<int64_t>(epoch)},
                                        {"args", args_dict(o_)}});
      const std::string path = o_.output_dir + "/model_" + std::to_string(epoch) + ".pth";
      checkpoint::save(object, path);
      publish_alias(path, o_.output_dir + "/checkpoint.pth", object);
      append_line(o_.output_dir + "/metrics.jsonl", to_json(m));
    });
  }

  const TrainOptions& o_;
  comm::Communicator& comm_;
  const bool rank0_;
  const c10::Device device_;
  const std::string host_memory_;
  ImageDataset train_data_, test_data_;
  std::shared_ptr<Model> model_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<Sgd> sgd_;
  std::unique_ptr<StepLr> scheduler_;
  std::unique_ptr<DistributedSampler> sampler_;
  int start_epoch_ = 0;
};

}  // namespace

void train(const TrainOptions& options, comm::Communicator& comm, const std::string& host_memory) {
  Run(options, comm, host_memory).execute();
}

}  // namespace ddprun::trainer
