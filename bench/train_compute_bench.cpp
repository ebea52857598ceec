// train_compute_bench: the compute limit of a data-parallel step: one process doing only forward, backward, SGD step
// and zero_grad on batches made before the clock starts (no data loading, no communication), with ddptrain's model,
// optimizer, thread count and host-memory policy. scripts/bench/train_throughput.sh runs it beside ddptrain.
//
//   train_compute_bench --model M [-b B] [--samples N] [--epochs E] [--threads T] [--ranks R]
//
// Each epoch trains the N / R samples one rank of an R-rank run gets (DistributedSampler, rank 0) and prints
// "epoch E images/s X"; then "GRADIENT bytes B" (what one data-parallel step all-reduces: every parameter's gradient,
// float32) and last "RESULT model M images_per_sec X" with the median over epochs after the first (which also pays for
// first-touch allocations).
#include "ddprun/distributed_sampler.h"
#include "trainer/host_memory.h"
#include "trainer/idx_dataset.h"
#include "trainer/models.h"

#include <ATen/Parallel.h>
#include <ATen/ops/nll_loss.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace ddprun::trainer;

int main(int argc, char** argv) {
  std::string model_name = "mnist_cnn", data_path = "/usr/share/datasets/fashion-mnist";
  int64_t batch = 64, samples = 12000;
  int epochs = 3, threads = 1, ranks = 2;
  if (argc % 2 == 0) {
    std::fprintf(stderr, "train_compute_bench: flag %s has no value\n", argv[argc - 1]);
    return 2;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
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
    else if (flag == "--data-path")
      data_path = value;
    else {
      std::fprintf(stderr, "train_compute_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (batch < 1 || samples < 1 || epochs < 2 || threads < 1 || ranks < 1) {
    std::fprintf(stderr, "train_compute_bench: -b, --samples, --threads, --ranks must be positive, --epochs >= 2\n");
    return 2;
  }
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
    double forward_ms = 0, backward_ms = 0, step_ms = 0;
    const auto start = Clock::now();
    for (const auto& [images, labels] : batches) {
      const auto t0 = Clock::now();
      optimizer->zero_grad();  // counted with the optimizer step: ddptrain's forward span starts after it
      const auto t0_forward = Clock::now();
      at::Tensor loss = at::nll_loss(model->forward(images), labels);
      const auto t1 = Clock::now();
      loss.backward();
      const auto t2 = Clock::now();
      optimizer->step();
      (void)loss.item<double>();  // as ddptrain reads each step's loss
      const auto t3 = Clock::now();
      forward_ms += ms(t1 - t0_forward), backward_ms += ms(t2 - t1), step_ms += ms(t3 - t2) + ms(t0_forward - t0);
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    rates.push_back(static_cast<double>(order.size(0)) / seconds);
    const double steps = static_cast<double>(batches.size());
    std::printf(
        "epoch %d images/s %.1f  per step: forward %.2f ms, backward %.2f ms, optimizer step and zero_grad %.2f ms\n",
        epoch, rates.back(), forward_ms / steps, backward_ms / steps, step_ms / steps);
    std::fflush(stdout);
  }
  std::vector<double> measured(rates.begin() + 1, rates.end());
  std::sort(measured.begin(), measured.end());
  const size_t n = measured.size();
  const double median = n % 2 ? measured[n / 2] : (measured[n / 2 - 1] + measured[n / 2]) / 2;
  int64_t gradient_bytes = 0;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) gradient_bytes += p.numel() * static_cast<int64_t>(p.element_size());
  std::printf("GRADIENT bytes %lld\n", static_cast<long long>(gradient_bytes));
  std::printf("RESULT model %s images_per_sec %.2f\n", model_name.c_str(), median);
  return 0;
}
