// A small GAN on every GPU (or core) ddprun gives it: two models, each in DistributedDataParallel, two Adam
// optimizers, and one checkpoint that holds all four by name ("model" and "optimizer" for the generator,
// "discriminator" and "optimizer_d"), so that a preempted run resumes exactly and Python loads every part.
// The data: points on a ring of eight Gaussians in 2-D, drawn from a seeded generator.
// Usage: ddprun --np 2 -- ./train_gan OUT_DIR
#include <ddprun/ddprun.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

torch::nn::Sequential mlp(int64_t in, int64_t out) {
  return torch::nn::Sequential(
      torch::nn::Linear(in, 64), torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(0.2)),
      torch::nn::Linear(64, 64), torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(0.2)),
      torch::nn::Linear(64, out));
}

// `n` points of the ring, the same on every rank for a given seed.
torch::Tensor ring(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  const torch::Tensor angle = torch::randint(0, 8, {n}).to(torch::kFloat) * (3.14159265358979 / 4);
  return torch::stack({angle.cos(), angle.sin()}, 1) * 2 + torch::randn({n, 2}) * 0.05;
}

int train(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "out";
  const int64_t epochs = 4, batch = 64, samples = 8192, noise = 8;
  ddprun::ProcessGroup group = ddprun::init_process_group();
  ddprun::PreemptionGuard preemption(group);
  const torch::Tensor data = ring(samples, 0);
  torch::manual_seed(1);
  auto generator = mlp(noise, 2).ptr(), discriminator = mlp(2, 1).ptr();
  ddprun::DistributedDataParallel ddp_g(generator, group), ddp_d(discriminator, group);
  torch::manual_seed(100 + static_cast<uint64_t>(group.rank()));  // each rank its own noise (saved, restored)
  torch::optim::Adam opt_g(generator->parameters(), torch::optim::AdamOptions(1e-3).betas({0.5, 0.999}));
  torch::optim::Adam opt_d(discriminator->parameters(), torch::optim::AdamOptions(1e-3).betas({0.5, 0.999}));
  ddprun::DistributedSampler sampler(samples, group);
  ddprun::TrainingState state(*generator);
  state.optimizer(opt_g).module("discriminator", *discriminator).optimizer("optimizer_d", opt_d);
  state.sampler(sampler, batch).arg("noise", noise);
  ddprun::CheckpointManager checkpoints(group, state, out);
  const ddprun::ResumePoint start = checkpoints.resume_auto();
  for (int64_t epoch = start.epoch; epoch < epochs; ++epoch) {
    sampler.set_epoch(epoch);
    const torch::Tensor order = sampler.indices();
    torch::Tensor losses = torch::zeros({3});  // discriminator's and generator's loss sums, steps
    for (int64_t step = epoch == start.epoch ? start.step : 0; step < order.size(0) / batch; ++step) {
      const torch::Tensor real = data.index_select(0, order.slice(0, step * batch, (step + 1) * batch));
      const torch::Tensor fake = ddp_g(torch::randn({batch, noise}));
      namespace F = torch::nn::functional;
      const torch::Tensor loss_d = F::binary_cross_entropy_with_logits(ddp_d(real), torch::ones({batch, 1})) +
                                   F::binary_cross_entropy_with_logits(ddp_d(fake.detach()), torch::zeros({batch, 1}));
      opt_d.zero_grad();
      loss_d.backward();
      opt_d.step();
      const torch::Tensor loss_g = F::binary_cross_entropy_with_logits(ddp_d(fake), torch::ones({batch, 1}));
      opt_g.zero_grad();
      loss_g.backward();
      opt_g.step();
      losses += torch::stack({loss_d.detach(), loss_g.detach(), torch::ones({})});
      if (preemption.should_stop()) {
        checkpoints.save({epoch, step + 1});
        if (group.rank() == 0) std::printf("preempted after epoch %ld step %ld\n", long(epoch), long(step + 1));
        return ddprun::kExitPreempted;
      }
    }
    checkpoints.save({epoch + 1, 0});
    group.all_reduce(losses);
    if (group.rank() == 0)
      std::printf("epoch %ld loss_d %.4f loss_g %.4f\n", long(epoch), (losses[0] / losses[2]).item<double>(),
                  (losses[1] / losses[2]).item<double>());
  }
  return 0;
}

int main(int argc, char** argv) { return ddprun::run_main(argc, argv, train); }
