// Autocast scopes and the gradient scaler (include/ddprun/mixed_precision.h): Python's torch.autocast and
// torch.cuda.amp.GradScaler (1.13), with the scaler's kernels' arithmetic written out for devices LibTorch has no
// kernel for (its _amp_* ops are CUDA-only).
#include "ddprun/mixed_precision.h"

#include "ddprun/errors.h"

#include <ATen/autocast_mode.h>
#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceType.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace ddprun {
namespace {

bool autocast_enabled(c10::DeviceType device) {
  return device == c10::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
at::ScalarType autocast_dtype(c10::DeviceType device) {
  return device == c10::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void set_autocast(c10::DeviceType device, bool enabled, at::ScalarType dtype) {
  if (device == c10::kCUDA) {
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
}

std::string number_text(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}

}  // namespace

at::ScalarType default_autocast_dtype(c10::DeviceType device) {
  return device == c10::kCUDA ? at::kHalf : at::kBFloat16;
}

Autocast::Autocast(c10::DeviceType device, std::optional<at::ScalarType> dtype, bool enabled) : device_(device) {
  if (device != c10::kCPU && device != c10::kCUDA)
    throw UsageError(std::string("Autocast: LibTorch autocasts on cpu and cuda, not on ") +
                     c10::DeviceTypeName(device, /*lower_case=*/true));
  const at::ScalarType type = dtype.value_or(default_autocast_dtype(device));
  if (device == c10::kCPU && type != at::kBFloat16)
    throw UsageError(std::string("Autocast: on cpu LibTorch autocasts to bfloat16 only, not ") + c10::toString(type) +
                     "; use bfloat16 (or float16 on cuda)");
  if (device == c10::kCUDA && type != at::kHalf && type != at::kBFloat16)
    throw UsageError(std::string("Autocast: on cuda the types are float16 and bfloat16, not ") + c10::toString(type));
  previous_enabled_ = autocast_enabled(device);
  previous_dtype_ = autocast_dtype(device);
  previous_cache_ = at::autocast::is_autocast_cache_enabled();
  set_autocast(device, enabled, type);
  at::autocast::increment_nesting();
  at::autocast::set_autocast_cache_enabled(true);
}

Autocast::~Autocast() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast(device_, previous_enabled_, previous_dtype_);
  at::autocast::set_autocast_cache_enabled(previous_cache_);
}

GradScaler::GradScaler(GradScalerOptions options) : options_(options) {
  load_state({options.init_scale, options.growth_factor, options.backoff_factor, options.growth_interval, 0});
}

GradScaler::GradScaler(ProcessGroup& group, GradScalerOptions options) : GradScaler(options) { group_ = &group; }

at::Tensor GradScaler::scale(const at::Tensor& loss) {
  if (!options_.enabled) return loss;
  scaled_since_update_ = true;
  scale_used_ = true;
  // Python multiplies by its float32 scale tensor: the same op, the same bits.
  return loss * at::full({}, scale_, loss.options().dtype(at::kFloat));
}

void GradScaler::unscale_(torch::optim::Optimizer& optimizer) {
  if (!options_.enabled) return;
  if (!scale_used_)
    throw UsageError(
        "GradScaler::unscale_()/step(): scale() was never called: backward the scaled loss, "
        "scaler.scale(loss).backward(), then step");
  PerOptimizer& state = optimizers_[&optimizer];
  if (state.stage == Stage::Unscaled)
    throw UsageError("GradScaler::unscale_() has already been called on this optimizer since the last update()");
  if (state.stage == Stage::Stepped) throw UsageError("GradScaler::unscale_() is being called after step()");
  if (!scaled_since_update_)
    throw UsageError(
        "GradScaler::unscale_()/step(): scale() was not called since the last update(), so these gradients are not "
        "scaled and dividing them by the scale would shrink the step; backward scaler.scale(loss)");
  // Python: inv_scale = scale.double().reciprocal().float()
  const float inv_scale = static_cast<float>(1.0 / static_cast<double>(scale_));
  std::vector<at::Tensor> grads;
  for (const auto& group : optimizer.param_groups())
    for (const at::Tensor& p : group.params()) {
      if (!p.grad().defined()) continue;
      if (p.grad().scalar_type() == at::kHalf)
        throw UsageError(
            "GradScaler::unscale_(): a parameter's gradient is float16; keep the parameters in float32 and let "
            "Autocast run the forward in float16 (Python's \"Attempting to unscale FP16 gradients\")");
      grads.push_back(p.grad());
    }
  if (grads.empty())
    throw UsageError("GradScaler::step(): no parameter of this optimizer has a gradient (no inf checks recorded)");
  bool found_inf = false;
  std::vector<at::Tensor> on_cuda;
  for (const at::Tensor& g : grads) {
    if (g.is_cuda()) {
      on_cuda.push_back(g);
      continue;
    }
    // What the CUDA kernel does, one tensor at a time: note any non-finite value, multiply by inv_scale (unless 1).
    if (!at::isfinite(g).all().item<bool>()) found_inf = true;
    if (inv_scale != 1.0f) g.mul_(at::full({}, inv_scale, g.options().dtype(at::kFloat)));
  }
  if (!on_cuda.empty()) {
    at::Tensor found = at::zeros({1}, on_cuda.front().options().dtype(at::kFloat));
    at::_amp_foreach_non_finite_check_and_unscale_(on_cuda, found, at::full({1}, inv_scale, found.options()));
    if (found.item<float>() != 0) found_inf = true;
  }
  if (group_ != nullptr && group_->world_size() > 1) {  // one rank's overflow skips the step on every rank
    at::Tensor flag = at::full({1}, found_inf ? 1.0 : 0.0, at::kFloat);
    group_->all_reduce(flag, ReduceOp::Max);
    found_inf = flag.item<float>() != 0;
  }
  state.found_inf = found_inf;
  state.stage = Stage::Unscaled;
}

bool GradScaler::step(torch::optim::Optimizer& optimizer) {
  if (!options_.enabled) {
    optimizer.step();
    return true;
  }
  auto known = optimizers_.find(&optimizer);
  if (known != optimizers_.end() && known->second.stage == Stage::Stepped)
    throw UsageError("GradScaler::step() has already been called since the last update(); call update() each step");
  if (known == optimizers_.end() || known->second.stage == Stage::Ready) unscale_(optimizer);
  PerOptimizer& state = optimizers_[&optimizer];
  const bool stepped = !state.found_inf;
  if (stepped) optimizer.step();
  state.stage = Stage::Stepped;
  return stepped;
}

void GradScaler::update(std::optional<double> new_scale) {
  if (!options_.enabled) return;
  if (!scale_used_) throw UsageError("GradScaler::update(): scale() was never called");
  if (new_scale) {
    if (!std::isfinite(*new_scale) || *new_scale <= 0)
      throw UsageError("GradScaler::update(" + number_text(*new_scale) + "): the scale must be finite and positive");
    scale_ = static_cast<float>(*new_scale);
  } else {
    bool recorded = false, found_inf = false;
    for (const auto& [optimizer, state] : optimizers_) {
      if (state.stage == Stage::Ready) continue;
      recorded = true;
      found_inf = found_inf || state.found_inf;
    }
    if (!recorded)
      throw UsageError(
          "GradScaler::update(): no step() or unscale_() since the last update() (no inf checks recorded)");
    // torch._amp_update_scale_'s arithmetic: a float32 scale times a double factor.
    if (found_inf) {
      scale_ = static_cast<float>(static_cast<double>(scale_) * options_.backoff_factor);
      growth_tracker_ = 0;
    } else if (growth_tracker_ + 1 == options_.growth_interval) {
      const auto grown = static_cast<float>(static_cast<double>(scale_) * options_.growth_factor);
      if (std::isfinite(grown)) scale_ = grown;
      growth_tracker_ = 0;
    } else {
      ++growth_tracker_;
    }
  }
  optimizers_.clear();
  scaled_since_update_ = false;
}

double GradScaler::get_scale() const { return options_.enabled ? static_cast<double>(scale_) : 1.0; }

GradScalerState GradScaler::state() const {
  return {static_cast<double>(scale_), options_.growth_factor, options_.backoff_factor, options_.growth_interval,
          growth_tracker_};
}

void GradScaler::load_state(const GradScalerState& s) {
  auto refuse = [](const std::string& what) { throw UsageError("GradScaler: " + what); };
  if (!std::isfinite(s.scale) || s.scale <= 0 || s.scale > std::numeric_limits<float>::max())
    refuse("scale " + number_text(s.scale) + " is not a finite positive float32");
  if (!std::isfinite(s.growth_factor) || s.growth_factor <= 1.0)
    refuse("growth_factor " + number_text(s.growth_factor) + " must be finite and above 1.0");
  if (!std::isfinite(s.backoff_factor) || s.backoff_factor <= 0 || s.backoff_factor >= 1.0)
    refuse("backoff_factor " + number_text(s.backoff_factor) + " must be between 0 and 1.0");
  if (s.growth_interval < 1 || s.growth_interval > std::numeric_limits<int32_t>::max())
    refuse("growth_interval " + std::to_string(s.growth_interval) + " must be a positive int32");
  if (s.growth_tracker < 0 || s.growth_tracker >= s.growth_interval)
    refuse("_growth_tracker " + std::to_string(s.growth_tracker) + " must be in [0, growth_interval " +
           std::to_string(s.growth_interval) + ")");
  scale_ = static_cast<float>(s.scale);
  options_.growth_factor = s.growth_factor;
  options_.backoff_factor = s.backoff_factor;
  options_.growth_interval = s.growth_interval;
  growth_tracker_ = s.growth_tracker;
}

}  // namespace ddprun
