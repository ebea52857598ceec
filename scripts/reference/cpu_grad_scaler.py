"""torch.cuda.amp.GradScaler on CPU tensors, for PyTorch 1.13, whose GradScaler switches itself off without CUDA
and whose two kernels (_amp_foreach_non_finite_check_and_unscale_, _amp_update_scale_) exist for CUDA only. The
tests compare ddprun's GradScaler with it, and the training benchmark's Python --amp uses it.
"""
import math

import torch


def cpu_grad_scaler(**kwargs):
    """torch.cuda.amp.GradScaler (1.13) on CPU tensors: Python's own class and control flow (stages, skipped steps,
    state dict), with its three CUDA-only pieces replaced: the "CUDA is not available" switch-off, the is_cuda
    assertions, and the two kernels, written out as aten/src/ATen/native/cuda/AmpKernels.cu computes them."""
    from torch.cuda.amp import grad_scaler as gs

    def non_finite_check_and_unscale_(grads, found_inf, inv_scale):
        for g in grads:  # per tensor: note a non-finite value; multiply by inv_scale (float32) unless it is 1
            if not bool(torch.isfinite(g).all()):
                found_inf.fill_(1.0)
            if inv_scale.item() != 1.0:
                g.mul_(inv_scale.view(()))

    def update_scale_(scale, growth_tracker, found_inf, growth_factor, backoff_factor, growth_interval):
        if found_inf.item():  # float32 scale times a double factor, stored back as float32
            scale.fill_(scale.item() * backoff_factor)
            growth_tracker.fill_(0)
        else:
            successful = growth_tracker.item() + 1
            if successful == growth_interval:
                grown = torch.tensor(scale.item() * growth_factor, dtype=torch.float32)
                if math.isfinite(grown.item()):
                    scale.copy_(grown)
                growth_tracker.fill_(0)
            else:
                growth_tracker.fill_(successful)
        return scale

    class Replicator(gs._MultiDeviceReplicator):
        def __init__(self, master_tensor):  # without the is_cuda assertion
            self.master = master_tensor
            self._per_device_tensors = {}

    class CpuGradScaler(gs.GradScaler):
        def scale(self, outputs):  # GradScaler.scale for one tensor, without the is_cuda assertion
            if self._scale is None:
                self._lazy_init_scale_growth_tracker(outputs.device)
            return outputs * self._scale.to(device=outputs.device, non_blocking=True)

    gs.amp_definitely_not_available = lambda: False
    gs._MultiDeviceReplicator = Replicator
    torch._amp_foreach_non_finite_check_and_unscale_ = non_finite_check_and_unscale_
    torch._amp_update_scale_ = update_scale_
    return CpuGradScaler(**kwargs)
