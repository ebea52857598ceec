// Users' habits that used to hang or silently diverge, one per case, for tests/library/mistakes.sh to run on 2 ranks
// and judge by what a user sees (the exit code, the lines on stderr, how long it took):
//   save_on_rank0        torchvision's save_on_master: CheckpointManager::save() on rank 0 only, rank 1 trains on
//   save_then_exit       rank 0 saves, rank 1 has already returned from main
//   weights_differ       a model trained without DistributedDataParallel on different data, then saved
//   unwrapped_same       the same without DDP but on the same data: saved, with a warning
//   forward_outside      a BatchNorm model wrapped, but called directly (no buffer broadcast)
//   optimizer_zero_grad  the optimizer's own zero_grad() with DDP: trains, and the ranks stay equal
//   exception_on_rank1   rank 1 throws std::runtime_error: one line, the job ends with exit code 1, not an abort
//   usage_everywhere     every rank finds a bad option together: one line from rank 0, exit code 2
//   data_loader          ddprun's sampler in torch::data's DataLoader: set_epoch after the loader exists, a start at
//                        batch 3 that never loads the skipped samples, the same order as indices()
//   scaler_inf_on_rank1  GradScaler on the group, each rank stepping on its own gradients (no DDP), an inf on rank 1:
//                        both ranks skip the step and back off; the weights stay equal
//   scaler_no_update     the scaler's step() twice without update(): one line, exit code 2, no hang
// Usage: mpirun -np 2 mistakes CASE OUT_DIR
#include <ddprun/ddprun.h>
#include <torch/torch.h>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace {

struct Net : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  explicit Net(bool batch_norm) {
    fc = register_module("fc", torch::nn::Linear(8, 4));
    if (batch_norm) bn = register_module("bn", torch::nn::BatchNorm1d(4));
  }
  torch::Tensor forward(torch::Tensor x) { return bn ? bn(fc(x)) : fc(x); }
};

// A step of SGD on a batch that depends on `seed`.
void step(torch::nn::Module& net, const std::function<torch::Tensor(torch::Tensor)>& forward,
          torch::optim::Optimizer& optimizer, int64_t seed) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  const torch::Tensor x = torch::randn({16, 8});
  optimizer.zero_grad();
  forward(x).pow(2).mean().backward();
  optimizer.step();
  (void)net;
}

// A dataset of `size` samples that counts the samples it is asked for.
struct Counting : torch::data::datasets::Dataset<Counting, torch::data::Example<>> {
  explicit Counting(int64_t size, int64_t* fetched) : size_(size), fetched_(fetched) {}
  torch::data::Example<> get(size_t index) override {
    ++*fetched_;
    return {torch::tensor(static_cast<int64_t>(index)), torch::tensor(0)};
  }
  torch::optional<size_t> size() const override { return static_cast<size_t>(size_); }
  int64_t size_;
  int64_t* fetched_;
};

int run(int argc, char** argv) {
  if (argc < 3) throw ddprun::UsageError("usage: mistakes CASE OUT_DIR");
  const std::string kase = argv[1], out = argv[2];
  ddprun::ProcessGroup group = ddprun::init_process_group();
  const int rank = group.rank();
  torch::manual_seed(0);
  auto net = std::make_shared<Net>(kase == "forward_outside");
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.1));

  if (kase == "save_on_rank0" || kase == "save_then_exit") {
    ddprun::DistributedDataParallel ddp(net, group);
    ddprun::CheckpointManager checkpoints(group, ddprun::TrainingState(*net).optimizer(optimizer), out);
    step(
        *net, [&](torch::Tensor x) { return ddp(x); }, optimizer, 1);
    if (rank == 0) checkpoints.save({1, 0});  // the habit: only the master saves
    if (kase == "save_then_exit") return 0;
    for (int s = 2; s < 100; ++s)
      step(
          *net, [&](torch::Tensor x) { return ddp(x); }, optimizer, s);
    return 0;
  }
  if (kase == "weights_differ" || kase == "unwrapped_same") {
    ddprun::CheckpointManager checkpoints(group, ddprun::TrainingState(*net).optimizer(optimizer), out);
    // No DDP: each rank steps alone, on its own data (weights_differ) or on the same data (unwrapped_same).
    step(
        *net, [&](torch::Tensor x) { return net->forward(x); }, optimizer, kase == "weights_differ" ? rank : 7);
    checkpoints.save({1, 0});
    if (rank == 0) std::printf("saved\n");
    return 0;
  }
  if (kase == "forward_outside") {
    ddprun::DistributedDataParallel ddp(net, group);
    step(
        *net, [&](torch::Tensor x) { return net->forward(x); }, optimizer, 1);  // not ddp(x)
    return 0;
  }
  if (kase == "optimizer_zero_grad") {
    ddprun::DistributedDataParallel ddp(net, group);
    ddprun::CheckpointManager checkpoints(group, ddprun::TrainingState(*net).optimizer(optimizer), out);
    for (int s = 0; s < 5; ++s)
      step(
          *net, [&](torch::Tensor x) { return ddp(x); }, optimizer, s * 2 + rank);
    checkpoints.save({1, 0});  // the ranks' weights are compared here
    if (rank == 0) std::printf("trained with optimizer.zero_grad(); the ranks' weights are equal\n");
    return 0;
  }
  if (kase == "exception_on_rank1") {
    if (rank == 1) throw std::runtime_error("something in the user's code went wrong on this rank");
    group.barrier();  // rank 0 waits for rank 1, which will never come
    return 0;
  }
  if (kase == "usage_everywhere") {
    group.run_on_every_rank([] { throw ddprun::UsageError("--widgets 0 is out of range: must be at least 1"); });
    return 0;
  }
  if (kase == "data_loader") {
    int64_t fetched = 0;
    const int64_t size = 100, batch = 8;
    ddprun::DistributedSampler sampler(size, group, /*shuffle=*/true, /*seed=*/5);
    auto loader =
        torch::data::make_data_loader(Counting(size, &fetched), sampler, torch::data::DataLoaderOptions(batch));
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      const int64_t first = epoch == 1 ? 3 : 0;  // epoch 1 resumes at batch 3
      sampler.set_epoch(epoch, first);           // the loader's copy sees it
      fetched = 0;
      std::vector<int64_t> seen;
      for (auto& examples : *loader)
        for (auto& e : examples) seen.push_back(e.data.item<int64_t>());
      const at::Tensor expected = sampler.indices().slice(0, first * batch);
      const bool same =
          static_cast<int64_t>(seen.size()) == expected.size(0) && torch::equal(torch::tensor(seen), expected);
      if (!same || fetched != expected.size(0))
        throw std::runtime_error("epoch " + std::to_string(epoch) + ": the loader gave " + std::to_string(seen.size()) +
                                 " samples (" + std::to_string(fetched) + " loaded), expected " +
                                 std::to_string(expected.size(0)) + " in the sampler's order");
    }
    if (rank == 0) std::printf("the DataLoader followed the sampler: set_epoch, Python's order, a mid-epoch start\n");
    return 0;
  }
  if (kase == "scaler_inf_on_rank1" || kase == "scaler_no_update") {
    ddprun::GradScaler scaler(group);
    for (int s = 0; s < 2; ++s) {
      torch::manual_seed(static_cast<uint64_t>(s));
      const torch::Tensor x = torch::randn({16, 8});
      optimizer.zero_grad();
      torch::Tensor loss = net->forward(x).pow(2).mean();
      if (kase == "scaler_inf_on_rank1" && s == 1 && rank == 1) loss = loss * INFINITY;  // an overflow here only
      scaler.scale(loss).backward();
      const bool stepped = scaler.step(optimizer);
      if (kase == "scaler_no_update") continue;  // the habit: update() forgotten
      scaler.update();
      std::printf("rank %d step %d: %s, scale %g\n", rank, s, stepped ? "stepped" : "skipped", scaler.get_scale());
    }
    return 0;
  }
  throw ddprun::UsageError("unknown case '" + kase + "'");
}

}  // namespace

int main(int argc, char** argv) { return ddprun::run_main(argc, argv, run); }
