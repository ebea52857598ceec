// Fashion-MNIST (or MNIST) with LibTorch's own DataLoader: train.cpp on one process, train_ddp.cpp the same with
// ddprun on every GPU (or core): DistributedDataParallel, its sampler, checkpoints Python opens, preemption, resume.
// Usage: ./train DATA OUT, ddprun --np 2 -- ./train_ddp DATA OUT (DATA: the uncompressed IDX files)
#include <ddprun/ddprun.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

struct Net : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(784, 256));
    fc2 = register_module("fc2", torch::nn::Linear(256, 10));
  }
  torch::Tensor forward(torch::Tensor x) { return torch::log_softmax(fc2(torch::relu(fc1(x.flatten(1)))), 1); }
};

int train(int argc, char** argv) {
  const std::string data = argv[1], out = argv[2];
  const int64_t epochs = 2, batch = 64;
  ddprun::ProcessGroup group = ddprun::init_process_group();
  ddprun::PreemptionGuard preemption(group);
  torch::manual_seed(1);
  auto net = std::make_shared<Net>();
  ddprun::DistributedDataParallel ddp(net, group);
  auto dataset = torch::data::datasets::MNIST(data)
                     .map(torch::data::transforms::Normalize<>(0.1307, 0.3081))
                     .map(torch::data::transforms::Stack<>());
  const int64_t size = dataset.size().value();
  ddprun::DistributedSampler sampler(size, group);
  auto loader = torch::data::make_data_loader(std::move(dataset), sampler, torch::data::DataLoaderOptions(batch));
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ddprun::CheckpointManager checkpoints(group, ddprun::TrainingState(*net).optimizer(optimizer).sampler(sampler, batch),
                                        out);
  const ddprun::ResumePoint start = checkpoints.resume_auto();
  for (int64_t epoch = start.epoch; epoch < epochs; ++epoch) {
    double loss_sum = 0;
    int64_t steps = 0;
    const int64_t first = epoch == start.epoch ? start.step : 0;  // a resumed epoch starts at its step
    sampler.set_epoch(epoch, first);
    for (auto& b : *loader) {
      auto loss = torch::nll_loss(ddp(b.data), b.target);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>();
      ++steps;
      if (preemption.should_stop()) {  // SIGUSR1 on some rank: every rank stops after the same step
        checkpoints.save({epoch, first + steps});
        return ddprun::kExitPreempted;
      }
    }
    checkpoints.save({epoch + 1, 0});
    if (group.rank() == 0) std::printf("epoch %ld loss %.4f\n", long(epoch), loss_sum / double(steps));
  }
  return 0;
}

int main(int argc, char** argv) { return ddprun::run_main(argc, argv, train); }
