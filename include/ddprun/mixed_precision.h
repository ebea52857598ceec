// Mixed precision for LibTorch loops, as Python's torch.autocast and torch.cuda.amp.GradScaler: an autocast scope for
// the forward pass, and a gradient scaler with Python's schedule, checks and state dict ("scaler" in a checkpoint,
// see TrainingState::grad_scaler). On several ranks the scaler's inf/NaN check is agreed: one rank's overflow
// skips the step on every rank.
//   ddprun::GradScaler scaler(group);
//   { ddprun::Autocast autocast(device.type()); loss = criterion(ddp(images), labels); }
//   scaler.scale(loss).backward();
//   scaler.unscale_(optimizer);                                   // before clipping
//   torch::nn::utils::clip_grad_norm_(net->parameters(), 1.0);    // LibTorch's, on the true gradients
//   scaler.step(optimizer);                                       // skipped when a gradient is inf/NaN on any rank
//   scaler.update();
#pragma once

#include "ddprun/process_group.h"

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <map>
#include <optional>

namespace ddprun {

// The lower-precision type autocast uses by default on a device: bfloat16 on CPU (LibTorch's CPU autocast takes no
// other), float16 on CUDA.
at::ScalarType default_autocast_dtype(c10::DeviceType device);

// Within its scope, eligible ops on `device` run in `dtype` (matmul, convolution, linear) or in float32 (softmax,
// losses), as Python's `with torch.autocast(device_type, dtype)`. Scopes nest; leaving the outermost one clears the
// cast-weight cache. Throws UsageError for a device or dtype LibTorch cannot autocast (float16 on CPU).
// The backward pass needs no scope: it runs each op in the type its forward used.
class Autocast {
 public:
  explicit Autocast(c10::DeviceType device, std::optional<at::ScalarType> dtype = std::nullopt, bool enabled = true);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  c10::DeviceType device_;
  bool previous_enabled_;
  at::ScalarType previous_dtype_;
  bool previous_cache_;
};

// torch.cuda.amp.GradScaler's arguments and defaults.
struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;  // steps without inf/NaN before the scale grows
  bool enabled = true;             // false: scale() and unscale_() do nothing, step() is optimizer.step()
};

// Python's GradScaler state dict: {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}.
struct GradScalerState {
  double scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  int64_t growth_tracker = 0;
};

// Multiplies the loss by a scale so that small float16 gradients do not flush to zero, divides the gradients by it
// before the step, skips steps whose gradients hold inf/NaN and lowers the scale then (backoff), raises it after
// growth_interval good steps (growth): Python's schedule and arithmetic (float32 scale) bit for bit. Each call
// refuses what Python refuses (unscale_ twice, step twice without update(), ...), with one line that says what to do.
class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});
  // On several ranks: unscale_() agrees on inf/NaN over `group` (a small all-reduce; every rank calls it together).
  explicit GradScaler(ProcessGroup& group, GradScalerOptions options = {});

  at::Tensor scale(const at::Tensor& loss);
  // Divides `optimizer`'s gradients by the scale and records whether any (on any rank) is inf/NaN. Optional: step()
  // does it when it was not called; call it before touching the gradients (clipping them).
  void unscale_(torch::optim::Optimizer& optimizer);
  // optimizer.step() unless a gradient was inf/NaN; returns whether it stepped.
  bool step(torch::optim::Optimizer& optimizer);
  // The next scale (backoff or growth), after every optimizer's step() of this iteration; or set it.
  void update(std::optional<double> new_scale = std::nullopt);

  double get_scale() const;  // 1.0 when disabled
  bool is_enabled() const { return options_.enabled; }
  // Python's state_dict()/load_state_dict(): load_state() throws UsageError for values out of range.
  GradScalerState state() const;
  void load_state(const GradScalerState& state);

 private:
  enum class Stage { Ready, Unscaled, Stepped };
  struct PerOptimizer {
    Stage stage = Stage::Ready;
    bool found_inf = false;
  };

  GradScalerOptions options_;
  ProcessGroup* group_ = nullptr;
  float scale_ = 0;  // Python keeps it in a float32 tensor
  int64_t growth_tracker_ = 0;
  bool scale_used_ = false;           // scale() was called once (Python's scale tensor exists)
  bool scaled_since_update_ = false;  // ... since the last update()
  std::map<const torch::optim::Optimizer*, PerOptimizer> optimizers_;
};

}  // namespace ddprun
