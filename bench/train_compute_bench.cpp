// train_compute_bench: the compute limit of a data-parallel step: one process doing only forward, backward, SGD step
// and zero_grad on batches made before the clock starts (no data loading, no communication), with ddptrain's model,
// optimizer, thread count and host-memory policy. scripts/bench/train_throughput.sh runs it beside ddptrain.
//
//   train_compute_bench --model M [-b B] [--samples N] [--epochs E] [--threads T] [--ranks R]
//                       [--processes P [--lockstep]]
//
// Each epoch trains the N / R samples one rank of an R-rank run gets (DistributedSampler, rank 0) and prints
// "epoch E images/s X"; then "GRADIENT bytes B" (what one data-parallel step all-reduces: every parameter's gradient,
// float32) and last "RESULT model M images_per_sec X" with the median over epochs after the first (which also pays for
// first-touch allocations).
// --processes P runs P such processes at once (sharing the cores, caches and memory bandwidth as P ranks do), each
// printing its own lines ("process K epoch ...", one RESULT line each). --lockstep makes them step together as
// synchronous data-parallel training must: after each backward (where DDP's all-reduce ends) every process waits,
// asleep, until all have got there, so each step takes as long as the slowest process's; the epoch lines then also
// give the time a process waited per step.
#include "ddprun/distributed_sampler.h"
#include "trainer/host_memory.h"
#include "trainer/idx_dataset.h"
#include "trainer/models.h"

#include <ATen/Parallel.h>
#include <ATen/ops/nll_loss.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace ddprun::trainer;

namespace {

// A barrier of P forked processes on pipes: process 0 collects one byte from each of the others, then answers each.
// Each of the others has a pipe of its own each way, which only it and process 0 hold open, so when one dies process 0
// reads the end of its pipe at once (and ends, taking the others with it: PR_SET_PDEATHSIG). A process waiting in it
// sleeps in poll() and leaves its core to the others. Gives up after a minute (a process stopped for that long).
class PipeBarrier {
 public:
  explicit PipeBarrier(int processes) : up_(static_cast<size_t>(processes)), down_(static_cast<size_t>(processes)) {
    for (size_t k = 1; k < up_.size(); ++k)
      if (pipe(up_[k].data()) != 0 || pipe(down_[k].data()) != 0) fail("pipe");
  }
  // In process `index` after fork: close the ends this process does not use (all of the other processes' pipes).
  void keep_ends_of(int index) {
    index_ = index;
    for (size_t k = 1; k < up_.size(); ++k) {
      const bool mine = static_cast<int>(k) == index;
      if (index != 0 && !mine) {
        for (int fd : {up_[k][0], up_[k][1], down_[k][0], down_[k][1]}) ::close(fd);
        continue;
      }
      ::close(index == 0 ? up_[k][1] : up_[k][0]);  // process 0 reads the others' bytes, they write them
      ::close(index == 0 ? down_[k][0] : down_[k][1]);
    }
  }
  void wait() {
    char byte = 0;
    if (index_ == 0) {
      for (size_t k = 1; k < up_.size(); ++k) read_one(up_[k][0]);
      for (size_t k = 1; k < down_.size(); ++k) write_one(down_[k][1], byte);
    } else {
      write_one(up_[static_cast<size_t>(index_)][1], byte);
      read_one(down_[static_cast<size_t>(index_)][0]);
    }
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    std::fprintf(stderr, "train_compute_bench: process %d: lockstep %s failed (%s)\n", index_, what,
                 std::strerror(errno));
    std::_Exit(1);
  }
  void read_one(int fd) {
    pollfd p{fd, POLLIN, 0};
    int ready;
    while ((ready = ::poll(&p, 1, 60000)) < 0 && errno == EINTR) {
    }
    if (ready == 0) {
      errno = ETIMEDOUT;
      fail("wait for the other processes");
    }
    char byte;
    ssize_t got;
    while ((got = ::read(fd, &byte, 1)) < 0 && errno == EINTR) {
    }
    if (got != 1) {
      if (got == 0) errno = EPIPE;  // every writer gone: a process ended early
      fail("wait for the other processes");
    }
  }
  void write_one(int fd, char byte) {
    ssize_t put;
    while ((put = ::write(fd, &byte, 1)) < 0 && errno == EINTR) {
    }
    if (put != 1) fail("signal to the other processes");
  }

  std::vector<std::array<int, 2>> up_, down_;  // [k]: process k's pipes to and from process 0 (k >= 1)
  int index_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string model_name = "mnist_cnn", data_path = "/usr/share/datasets/fashion-mnist";
  int64_t batch = 64, samples = 12000;
  int epochs = 3, threads = 1, ranks = 2, processes = 1;
  bool lockstep = false;
  std::vector<std::string> args(argv + 1, argv + argc);
  args.erase(std::remove(args.begin(), args.end(), "--lockstep"), args.end());
  lockstep = args.size() + 1 != static_cast<size_t>(argc);
  if (args.size() % 2 != 0) {
    std::fprintf(stderr, "train_compute_bench: flag %s has no value\n", args.back().c_str());
    return 2;
  }
  for (size_t i = 0; i + 1 < args.size(); i += 2) {
    const std::string &flag = args[i], &value = args[i + 1];
    if (flag == "--model")
      model_name = value;
    else if (flag == "-b")
      batch = std::atoll(value.c_str());
    else if (flag == "--samples")
      samples = std::atoll(value.c_str());
    else if (flag == "--epochs")
      epochs = std::atoi(value.c_str());
    else if (flag == "--threads")
      threads = std::atoi(value.c_str());
    else if (flag == "--ranks")
      ranks = std::atoi(value.c_str());
    else if (flag == "--processes")
      processes = std::atoi(value.c_str());
    else if (flag == "--data-path")
      data_path = value;
    else {
      std::fprintf(stderr, "train_compute_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (batch < 1 || samples < 1 || epochs < 2 || threads < 1 || ranks < 1 || processes < 1 || processes > 64) {
    std::fprintf(stderr,
                 "train_compute_bench: -b, --samples, --threads, --ranks must be positive, --epochs >= 2, "
                 "--processes 1 to 64\n");
    return 2;
  }
  if (lockstep && processes < 2) {
    std::fprintf(stderr, "train_compute_bench: --lockstep needs --processes 2 or more (it makes them step together)\n");
    return 2;
  }
  // Fork before LibTorch starts any thread. Process 0 is this one; it waits for the others at the end.
  std::signal(SIGPIPE, SIG_IGN);  // a write to a process that ended fails with EPIPE, said by the barrier
  PipeBarrier barrier(processes);
  std::vector<pid_t> children;
  int index = 0;
  std::fflush(nullptr);
  for (int k = 1; k < processes; ++k) {
    const pid_t pid = fork();
    if (pid < 0) {
      std::perror("train_compute_bench: fork");
      for (pid_t child : children) kill(child, SIGKILL);
      return 1;
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // none outlives process 0
      if (getppid() == 1) std::_Exit(1);
      index = k;
      children.clear();
      break;
    }
    children.push_back(pid);
  }
  barrier.keep_ends_of(index);
  const std::string prefix = processes > 1 ? "process " + std::to_string(index) + " " : "";
  keep_freed_host_memory();
  at::set_num_threads(threads);
  const ImageDataset data = load_idx_dataset(data_path, Split::Train, samples);
  torch::manual_seed(1);
  auto model = make_model(model_name);
  // ddptrain's defaults: SGD, lr 0.05, momentum 0.9, weight decay 1e-4.
  auto optimizer = std::make_unique<torch::optim::SGD>(model->parameters(),
                                                       torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-4));
  model->train();

  std::vector<double> rates;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    ddprun::DistributedSampler sampler(data.size(), 0, ranks, true, 1);
    sampler.set_epoch(epoch);
    const at::Tensor order = sampler.indices();
    std::vector<std::pair<at::Tensor, at::Tensor>> batches;  // ready before the clock starts
    for (int64_t begin = 0; begin < order.size(0); begin += batch)
      batches.push_back(make_batch(data, order.narrow(0, begin, std::min(batch, order.size(0) - begin))));
    using Clock = std::chrono::steady_clock;
    const auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
    double forward_ms = 0, backward_ms = 0, step_ms = 0, wait_ms = 0;
    if (lockstep) barrier.wait();  // every process's batches are ready
    const auto start = Clock::now();
    for (const auto& [images, labels] : batches) {
      const auto t0 = Clock::now();
      optimizer->zero_grad();  // counted with the optimizer step: ddptrain's forward span starts after it
      const auto t0_forward = Clock::now();
      at::Tensor loss = at::nll_loss(model->forward(images), labels);
      const auto t1 = Clock::now();
      loss.backward();
      const auto t2 = Clock::now();
      auto t2_step = t2;  // the optimizer step starts after the wait
      if (lockstep) {
        barrier.wait();
        t2_step = Clock::now();
        wait_ms += ms(t2_step - t2);
      }
      optimizer->step();
      (void)loss.item<double>();  // as ddptrain reads each step's loss
      const auto t3 = Clock::now();
      forward_ms += ms(t1 - t0_forward), backward_ms += ms(t2 - t1);
      step_ms += ms(t3 - t2_step) + ms(t0_forward - t0);
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    rates.push_back(static_cast<double>(order.size(0)) / seconds);
    const double steps = static_cast<double>(batches.size());
    char waited[64] = "";
    if (lockstep) std::snprintf(waited, sizeof waited, "waiting for the others %.2f ms, ", wait_ms / steps);
    std::printf(
        "%sepoch %d images/s %.1f  per step: forward %.2f ms, backward %.2f ms, %soptimizer step and zero_grad %.2f "
        "ms\n",
        prefix.c_str(), epoch, rates.back(), forward_ms / steps, backward_ms / steps, waited, step_ms / steps);
    std::fflush(stdout);
  }
  std::vector<double> measured(rates.begin() + 1, rates.end());
  std::sort(measured.begin(), measured.end());
  const size_t n = measured.size();
  const double median = n % 2 ? measured[n / 2] : (measured[n / 2 - 1] + measured[n / 2]) / 2;
  int64_t gradient_bytes = 0;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) gradient_bytes += p.numel() * static_cast<int64_t>(p.element_size());
  if (index == 0) std::printf("GRADIENT bytes %lld\n", static_cast<long long>(gradient_bytes));
  std::printf("RESULT model %s images_per_sec %.2f\n", model_name.c_str(), median);
  std::fflush(stdout);
  if (index != 0) std::_Exit(0);
  int failed = 0;
  for (pid_t child : children) {
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
  }
  if (failed) {
    std::fprintf(stderr, "train_compute_bench: %d of the other %d processes failed\n", failed, processes - 1);
    return 1;
  }
  return 0;
}
