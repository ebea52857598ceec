// Your own LibTorch network and loop on ddprun: DDP on every rank, checkpoints Python opens, preemption, and resume
// exactly where it stopped.   Build: find_package(ddprun), link ddprun::ddprun.   Run: ddprun --np 2 -- ./train OUT
#include <ddprun/ddprun.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

// Not one of ddptrain's models: a small MLP with dropout over 32 features.
struct Net : torch::nn::Module {
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout dropout{nullptr};
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(32, 256));
    dropout = register_module("dropout", torch::nn::Dropout(0.2));
    fc2 = register_module("fc2", torch::nn::Linear(256, 2));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(dropout(torch::relu(fc1(x)))); }
};

int train(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "out";
  const int64_t epochs = 3, batch = 32, samples = 131072;
  ddprun::ProcessGroup group = ddprun::init_process_group();  // MPI, this rank, its device
  ddprun::PreemptionGuard preemption(group);                  // SIGUSR1, SIGUSR2 from now on
  torch::manual_seed(0);                                      // the same data and first weights on every rank
  const torch::Tensor x = torch::randn({samples, 32}), y = (x.matmul(torch::randn({32})) > 0).to(torch::kLong);
  auto net = std::make_shared<Net>();
  net->to(group.device());
  ddprun::DistributedDataParallel ddp(net, group);  // gradients averaged over the ranks during backward
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ddprun::LrSchedulerOptions schedule;
  schedule.step_size = 2;
  ddprun::LrScheduler scheduler(optimizer, schedule);  // StepLR, with a state Python reads
  ddprun::DistributedSampler sampler(samples, group);  // Python's DistributedSampler order
  ddprun::TrainingState state(*net);                   // what the checkpoint holds, as torchvision's dict
  state.optimizer(optimizer).lr_scheduler(scheduler).sampler(sampler, batch);
  ddprun::CheckpointOptions where;
  where.directory = out;
  ddprun::CheckpointManager checkpoints(group, state, where);
  const ddprun::ResumePoint start = checkpoints.resume_auto();
  for (int64_t epoch = start.epoch; epoch < epochs; ++epoch) {
    sampler.set_epoch(epoch);
    const torch::Tensor order = sampler.indices();
    const int64_t steps = order.size(0) / batch;
    torch::Tensor loss = torch::zeros({2});  // this run's sum of losses in the epoch, and its steps
    for (int64_t step = epoch == start.epoch ? start.step : 0; step < steps; ++step) {
      const torch::Tensor idx = order.slice(0, step * batch, (step + 1) * batch);
      const torch::Tensor batch_loss = torch::nn::functional::cross_entropy(
          ddp(x.index_select(0, idx).to(group.device())), y.index_select(0, idx).to(group.device()));
      optimizer.zero_grad();
      batch_loss.backward();
      optimizer.step();
      loss += torch::stack({batch_loss.detach().cpu(), torch::ones({})});
      if (preemption.should_stop()) {  // every rank stops after the same step
        checkpoints.save({epoch, step + 1});
        if (group.rank() == 0) std::printf("preempted after epoch %ld step %ld\n", long(epoch), long(step + 1));
        return ddprun::kExitPreempted;  // ddprun requeues the job under Slurm
      }
    }
    scheduler.step();
    checkpoints.save({epoch + 1, 0});
    group.all_reduce(loss);
    if (group.rank() == 0) std::printf("epoch %ld loss %.4f\n", long(epoch), (loss[0] / loss[1]).item<double>());
  }
  return 0;
}

int main(int argc, char** argv) { return ddprun::run_main(argc, argv, train); }  // errors: one line, ddprun's codes
