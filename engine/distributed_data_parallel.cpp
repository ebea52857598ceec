// DistributedDataParallel: buckets, gradient-accumulator hooks, asynchronous averaged all-reduce during backward.
#include "engine/distributed_data_parallel.h"

#include "comm/tensor_text.h"
#include "ddprun/errors.h"
#include "engine/first_difference.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/strides.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <mutex>
#include <numeric>
#include <set>
#include <stdexcept>

namespace ddprun::engine {

GradCompression parse_grad_compression(const std::string& name) {
  if (name == "none") return GradCompression::None;
  if (name == "fp16") return GradCompression::Fp16;
  if (name == "bf16") return GradCompression::Bf16;
  throw std::invalid_argument("unknown gradient compression '" + name + "'; choose none, fp16 or bf16");
}

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// The modules wrapped now (a module may be wrapped more than once: a multiset).
std::mutex& wrapped_mutex() {
  static std::mutex mutex;
  return mutex;
}
std::multiset<const torch::nn::Module*>& wrapped() {
  static std::multiset<const torch::nn::Module*> modules;
  return modules;
}

std::string parameter_line(const std::string& name, const at::Tensor& p) {
  return name + " " + comm::describe_tensors({p});
}

}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, comm::Communicator& comm,
                                                 DdpOptions options)
    : module_(std::move(module)), comm_(comm), options_(options) {
  for (const auto& item : module_->named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    names_.push_back(item.key());
    params_.push_back(item.value());
  }
  for (const at::Tensor& b : module_->buffers(/*recurse=*/true)) buffers_.push_back(b.detach());  // same storage

  // The same parameters everywhere, or every rank stops here with the first difference.
  std::string mine;
  for (size_t i = 0; i < params_.size(); ++i) mine += parameter_line(names_[i], params_[i]) + "\n";
  const std::vector<std::string> all = comm_.allgather_bytes(mine);
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    const auto [theirs, rank0s] = first_different_lines(all[r], all[0]);
    throw UsageError("DistributedDataParallel: rank " + std::to_string(r) + " has other parameters than rank 0: '" +
                         theirs + "' where rank 0 has '" + rank0s + "'; every rank must build the same model",
                     static_cast<int>(r));
  }

  {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> state;
    for (const at::Tensor& p : params_) state.push_back(p.detach());
    state.insert(state.end(), buffers_.begin(), buffers_.end());
    if (comm_.size() > 1 && !state.empty()) comm_.broadcast(state, 0)->wait();
  }

  std::vector<size_t> reverse(params_.size());
  std::iota(reverse.rbegin(), reverse.rend(), size_t{0});
  build_buckets(reverse);
  install_hooks();
  std::lock_guard<std::mutex> lock(wrapped_mutex());
  wrapped().insert(module_.get());
}

DistributedDataParallel::~DistributedDataParallel() {
  {
    std::lock_guard<std::mutex> lock(wrapped_mutex());
    wrapped().erase(wrapped().find(module_.get()));
  }
  for (auto& [node, key] : hooks_) node->del_post_hook(key);
  for (Bucket& b : buckets_)
    if (b.work) b.work->wait();
}

std::vector<std::vector<size_t>> DistributedDataParallel::bucket_layout() const {
  std::vector<std::vector<size_t>> layout;
  for (const Bucket& b : buckets_) layout.push_back(b.params);
  return layout;
}

void DistributedDataParallel::build_buckets(const std::vector<size_t>& order) {
  at::NoGradGuard no_grad;
  const double first_cap = std::min(options_.first_bucket_mb, options_.bucket_cap_mb) * kMiB;
  const double cap = options_.bucket_cap_mb * kMiB;
  std::vector<Bucket> buckets;
  double bytes = 0;
  for (size_t i : order) {
    const at::Tensor& p = params_[i];
    const bool fits = !buckets.empty() && bytes + double(p.nbytes()) <= (buckets.size() == 1 ? first_cap : cap) &&
                      params_[buckets.back().params.front()].options().type_equal(p.options());
    if (!fits) {
      buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().params.push_back(i);
    bytes += double(p.nbytes());
  }
  bucket_of_.assign(params_.size(), 0);
  views_.assign(params_.size(), at::Tensor());
  for (size_t b = 0; b < buckets.size(); ++b) {
    Bucket& bucket = buckets[b];
    int64_t count = 0;
    for (size_t i : bucket.params) count += params_[i].numel();
    bucket.data = at::zeros({count}, params_[bucket.params.front()].options());
    int64_t offset = 0;
    for (size_t i : bucket.params) {
      at::Tensor& p = params_[i];
      // The bucket's memory, but not an autograd view of it: torch::optim's zero_grad detaches .grad in place,
      // which a view refuses ("Can't detach views in-place").
      at::Tensor view = at::empty({0}, bucket.data.options())
                            .set_(bucket.data.storage(), bucket.data.storage_offset() + offset, p.sizes(),
                                  c10::contiguous_strides(p.sizes()));
      if (p.grad().defined()) view.copy_(p.grad());
      p.mutable_grad() = view;  // AccumulateGrad adds into the bucket from now on
      views_[i] = view;
      bucket_of_[i] = b;
      offset += p.numel();
    }
    bucket.pending = bucket.params.size();
  }
  buckets_ = std::move(buckets);
  ready_.assign(params_.size(), false);
  next_bucket_ = 0;
}

void DistributedDataParallel::install_hooks() {
  for (size_t i = 0; i < params_.size(); ++i) {
    std::shared_ptr<torch::autograd::Node> accumulator = torch::autograd::impl::grad_accumulator(params_[i]);
    const uintptr_t key = accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          mark_ready(i);
          return outputs;
        }));
    hooks_.emplace_back(std::move(accumulator), key);
  }
}

bool DistributedDataParallel::wraps(const torch::nn::Module& module) {
  std::lock_guard<std::mutex> lock(wrapped_mutex());
  return wrapped().count(&module) > 0;
}

void DistributedDataParallel::before_forward() {
  forward_seen_ = true;
  if (!options_.broadcast_buffers || buffers_.empty() || comm_.size() == 1) return;
  comm_.broadcast(buffers_, 0)->wait();
}

void DistributedDataParallel::mark_ready(size_t i) {
  if (!sync_) return;
  if (!backward_started_) {
    backward_started_ = true;
    torch::autograd::Engine::get_default_engine().queue_callback([this] { finish_backward(); });
  }
  if (ready_[i]) return;
  ready_[i] = true;
  if (!rebuilt_) ready_order_.push_back(i);
  if (!params_[i].grad().is_same(views_[i])) {
    // Someone replaced .grad (set it to None, say): bring it back into the bucket.
    at::NoGradGuard no_grad;
    views_[i].copy_(params_[i].grad());
    params_[i].mutable_grad() = views_[i];
  }
  Bucket& bucket = buckets_[bucket_of_[i]];
  if (--bucket.pending == 0) launch_ready_buckets();
}

void DistributedDataParallel::zero_grad() {
  at::NoGradGuard no_grad;
  for (Bucket& bucket : buckets_) bucket.data.zero_();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().is_same(views_[i])) params_[i].mutable_grad() = views_[i];
  }
}

void DistributedDataParallel::launch_ready_buckets() {
  // In index order on every rank: the ranks' collectives must line up, whatever order their gradients came in.
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].pending == 0) {
    Bucket& b = buckets_[next_bucket_++];
    b.ready_at = std::chrono::steady_clock::now();
    if (options_.compression == GradCompression::None) {
      b.work = comm_.allreduce(b.data, comm::ReduceOp::Average);
    } else {
      b.wire = b.data.to(options_.compression == GradCompression::Fp16 ? at::kHalf : at::kBFloat16);
      b.work = comm_.allreduce(b.wire, comm::ReduceOp::Average);
    }
  }
}

void DistributedDataParallel::finish_backward() {
  backward_started_ = false;
  const bool forward_seen = forward_seen_;
  forward_seen_ = false;
  std::vector<size_t> unused;
  for (size_t i = 0; i < params_.size(); ++i)
    if (!ready_[i]) unused.push_back(i);
  // The module's forward was called directly: rank 0's buffers did not reach this rank, whose BatchNorm statistics
  // drift apart from the others'. Said once every rank agrees (here, in the backward every rank runs).
  const bool buffers_skipped = !forward_seen && options_.broadcast_buffers && !buffers_.empty() && comm_.size() > 1;
  if (buffers_skipped || (!unused.empty() && !options_.find_unused_parameters)) {
    for (Bucket& b : buckets_)
      if (b.work) b.work->wait();
    reset_for_next_backward();
    ready_order_.clear();  // this backward's order is not a whole one: the rebuild waits for the next
  }
  if (buffers_skipped)
    throw UsageError(
        "DistributedDataParallel: the module ran without the wrapper's forward (ddp(x) or ddp->forward(x)), so rank "
        "0's buffers (BatchNorm statistics) did not reach the other ranks, which drift apart; call the model through "
        "the wrapper, or before_forward() before calling it yourself");
  if (!unused.empty() && !options_.find_unused_parameters) {
    throw UsageError("DistributedDataParallel: parameter '" + names_[unused.front()] + "'" +
                     (unused.size() > 1 ? " and " + std::to_string(unused.size() - 1) + " more" : "") +
                     " got no gradient in this backward, so its bucket cannot be all-reduced; set "
                     "DdpOptions::find_unused_parameters (a parameter without a gradient then counts as zero) or use "
                     "every parameter in forward");
  }
  for (size_t i : unused) {  // find_unused_parameters: their .grad (zero unless accumulated) is reduced as is
    ready_[i] = true;
    --buckets_[bucket_of_[i]].pending;
  }
  launch_ready_buckets();
  {
    at::NoGradGuard no_grad;
    for (size_t index = 0; index < buckets_.size(); ++index) {
      Bucket& b = buckets_[index];
      if (b.work) b.work->wait();
      if (b.work && options_.on_bucket_done) {
        const int64_t bytes = b.wire.defined() ? b.wire.nbytes() : b.data.nbytes();
        options_.on_bucket_done({index, bytes, b.ready_at, b.work->finished_at()});
      }
      b.work.reset();
      if (b.wire.defined()) {
        b.data.copy_(b.wire);
        b.wire = at::Tensor();
      }
    }
  }
  if (!rebuilt_) {
    // Rank 0's order (parameters that never became ready go last, in reverse registration order).
    at::Tensor order = at::empty({static_cast<int64_t>(params_.size())}, at::kLong);
    int64_t* slots = order.data_ptr<int64_t>();
    std::vector<bool> listed(params_.size(), false);
    int64_t n = 0;
    for (size_t i : ready_order_) {
      if (listed[i]) continue;
      slots[n++] = static_cast<int64_t>(i);
      listed[i] = true;
    }
    for (size_t i = params_.size(); i-- > 0;)
      if (!listed[i]) slots[n++] = static_cast<int64_t>(i);
    if (comm_.size() > 1) comm_.broadcast(order, 0)->wait();
    std::vector<size_t> rebuilt(slots, slots + params_.size());
    build_buckets(rebuilt);
    rebuilt_ = true;
    ready_order_.clear();
    return;
  }
  reset_for_next_backward();
}

void DistributedDataParallel::reset_for_next_backward() {
  std::fill(ready_.begin(), ready_.end(), false);
  for (Bucket& b : buckets_) b.pending = b.params.size();
  next_bucket_ = 0;
}

}  // namespace ddprun::engine
