// Fashion-MNIST (or MNIST) with LibTorch's own DataLoader: train.cpp on one process, train_ddp.cpp the same with
// ddprun on every GPU (or core): DistributedDataParallel, its sampler, checkpoints Python opens, preemption, resume.
// Usage: ./train DATA OUT, ddprun --np 2 -- ./train_ddp DATA OUT (DATA: the uncompressed IDX files)
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
  torch::manual_seed(1);
  auto net = std::make_shared<Net>();
  auto dataset = torch::data::datasets::MNIST(data)
                     .map(torch::data::transforms::Normalize<>(0.1307, 0.3081))
                     .map(torch::data::transforms::Stack<>());
  const int64_t size = dataset.size().value();
  torch::data::samplers::RandomSampler sampler(size);
  auto loader = torch::data::make_data_loader(std::move(dataset), sampler, torch::data::DataLoaderOptions(batch));
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    double loss_sum = 0;
    int64_t steps = 0;
    for (auto& b : *loader) {
      auto loss = torch::nll_loss(net->forward(b.data), b.target);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>();
      ++steps;
    }
    torch::save(net, out + "/model.pt");
    std::printf("epoch %ld loss %.4f\n", long(epoch), loss_sum / double(steps));
  }
  return 0;
}

int main(int argc, char** argv) { return train(argc, argv); }
