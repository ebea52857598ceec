// SyncBatchNorm on W ranks x batch B against torch::nn::BatchNorm2d on 1 process x batch W*B (run under mpirun with
// 1, 2 and 3 ranks): the same normalized outputs, input gradients, weights after 3 SGD steps with DDP, and running
// statistics, within 2e-5; on 1 rank, bit-identical to BatchNorm2d. Also: the state dict has BatchNorm's names, and
// convert_sync_batchnorm refuses a model holding a torch::nn::BatchNorm2d, naming it. Prints PASS on rank 0.
#include <ddprun/ddprun.h>
#include <torch/torch.h>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace {

// conv (3 -> 4 channels), a normalization layer, ReLU, a linear head: BatchNorm2d or SyncBatchNorm.
struct Net : torch::nn::Module {
  explicit Net(torch::nn::AnyModule norm_layer) : norm(std::move(norm_layer)) {
    torch::manual_seed(7);
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)));
    register_module("bn", norm.ptr());
    fc = register_module("fc", torch::nn::Linear(4 * 4 * 4, 5));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    normalized = norm.forward<torch::Tensor>(conv(x));
    return fc(torch::relu(normalized).flatten(1));
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::AnyModule norm;
  torch::nn::Linear fc{nullptr};
  torch::Tensor normalized;  // the last forward's normalization output
};

void expect_close(const torch::Tensor& ours, const torch::Tensor& reference, const std::string& what, double tol) {
  const double diff = (ours.detach() - reference.detach()).abs().max().item<double>();
  if (!(diff <= tol)) {
    char text[96];
    std::snprintf(text, sizeof text, " by %.3g (tolerance %.3g)", diff, tol);
    throw std::runtime_error(what + ": SyncBatchNorm differs from BatchNorm2d on the whole batch" + text);
  }
}

int run(int, char**) {
  ddprun::ProcessGroup group = ddprun::init_process_group();
  const int world = group.world_size(), rank = group.rank();
  const int64_t per_rank = 6, global = per_rank * world;
  const double tol = world == 1 ? 0.0 : 2e-5;  // one rank: BatchNorm's own arithmetic

  auto synced = std::make_shared<Net>(torch::nn::AnyModule(ddprun::SyncBatchNorm(4)));
  auto reference = std::make_shared<Net>(torch::nn::AnyModule(torch::nn::BatchNorm2d(4)));
  if (ddprun::convert_sync_batchnorm(*synced, group) != 1) throw std::runtime_error("not one layer converted");
  std::vector<std::string> ours, theirs;
  for (const auto& item : synced->named_parameters()) ours.push_back(item.key());
  for (const auto& item : synced->named_buffers()) ours.push_back(item.key());
  for (const auto& item : reference->named_parameters()) theirs.push_back(item.key());
  for (const auto& item : reference->named_buffers()) theirs.push_back(item.key());
  if (ours != theirs) throw std::runtime_error("the state dict's names differ from BatchNorm2d's");

  ddprun::DistributedDataParallel ddp(synced, group);
  torch::optim::SGD sync_sgd(synced->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::SGD ref_sgd(reference->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  for (int step = 0; step < 3; ++step) {
    const torch::Tensor images =
        (torch::arange(global * 3 * 6 * 6, torch::kFloat) * 0.37 + step).sin().view({global, 3, 6, 6}) *
            (1.0 + 0.5 * step) +
        0.3;
    const torch::Tensor labels = torch::arange(global, torch::kLong).remainder(5);
    const torch::Tensor mine = images.narrow(0, rank * per_rank, per_rank).clone().requires_grad_();
    const torch::Tensor all = images.clone().requires_grad_();
    sync_sgd.zero_grad();
    ref_sgd.zero_grad();
    torch::nll_loss(torch::log_softmax(ddp(mine), 1), labels.narrow(0, rank * per_rank, per_rank)).backward();
    torch::nll_loss(torch::log_softmax(reference->forward(all), 1), labels).backward();
    const std::string at = "step " + std::to_string(step) + ": ";
    expect_close(synced->normalized, reference->normalized.narrow(0, rank * per_rank, per_rank), at + "output", tol);
    // Each rank's loss is a mean over its B samples, the reference's over W*B: its input gradient is W times.
    expect_close(mine.grad() / world, all.grad().narrow(0, rank * per_rank, per_rank), at + "input gradient",
                 tol * 1e-2);
    sync_sgd.step();
    ref_sgd.step();
    for (const auto& item : reference->named_parameters())
      expect_close(synced->named_parameters()[item.key()], item.value(), at + item.key(), tol);
    for (const auto& item : reference->named_buffers())
      expect_close(synced->named_buffers()[item.key()].to(torch::kDouble), item.value().to(torch::kDouble),
                   at + item.key(), tol);
  }
  synced->eval();
  reference->eval();
  const torch::Tensor test = torch::linspace(-2, 2, 2 * 3 * 6 * 6).view({2, 3, 6, 6});
  expect_close(synced->forward(test), reference->forward(test), "eval mode (running statistics)", tol);

  auto plain = std::make_shared<Net>(torch::nn::AnyModule(torch::nn::BatchNorm2d(4)));
  try {
    ddprun::convert_sync_batchnorm(*plain, group);
    throw std::runtime_error("a model with a torch::nn::BatchNorm2d was converted");
  } catch (const ddprun::UsageError& e) {
    if (std::string(e.what()).find("'bn' is a torch::nn::BatchNorm2d") == std::string::npos)
      throw std::runtime_error(std::string("the refusal does not name the layer: ") + e.what());
  }
  if (rank == 0)
    std::printf("PASS: SyncBatchNorm on %d rank(s) x %lld = BatchNorm2d on %lld\n", world,
                static_cast<long long>(per_rank), static_cast<long long>(global));
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return ddprun::run_main(argc, argv, run); }
