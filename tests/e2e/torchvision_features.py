"""torchvision's train.py objects for ddptrain's --amp --model-ema checkpoints (run with /usr/bin/python3): mnist_cnn
(scripts/reference/pytorch_ddp_mnist.py's Net), SGD (lr 0.05, momentum 0.9, weight decay 1e-4), a constant warm-up
of 1 epoch then StepLR(step 1, gamma 0.1) in SequentialLR, GradScaler (tests/trainer/pytorch_reference.py's CPU
stand-ins for its CUDA kernels) and ExponentialMovingAverage.

  load PATH   -> loads PATH as train.py resumes (model, optimizer, lr_scheduler, model_ema, scaler: load_state_dict,
                 strict), trains one --amp step with them, prints "resumed at epoch E, scale S, n_averaged N"
  save PATH   -> writes what train.py saves after epoch 0 (scaler at scale 512 with _growth_tracker 3, model_ema with
                 n_averaged 5), for ddptrain to resume
"""
import os
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "scripts", "reference"))
sys.path.insert(0, os.path.join(here, "..", "trainer"))
from pytorch_ddp_mnist import Net  # noqa: E402
from pytorch_reference import ExponentialMovingAverage, cpu_grad_scaler  # noqa: E402


def build():
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=0.01, total_iters=1)
    main_schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    lr_scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers=[warmup, main_schedule], milestones=[1])
    scaler = cpu_grad_scaler()
    model_ema = ExponentialMovingAverage(model, decay=0.9)
    return model, optimizer, lr_scheduler, scaler, model_ema


def train_step(model, optimizer, scaler, model_ema):
    image, target = torch.rand(4, 1, 28, 28), torch.arange(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.nll_loss(model(image), target)
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    model_ema.update_parameters(model)


def main(mode, path):
    model, optimizer, lr_scheduler, scaler, model_ema = build()
    if mode == "load":
        checkpoint = torch.load(path, map_location="cpu")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        model_ema.load_state_dict(checkpoint["model_ema"])
        scaler.load_state_dict(checkpoint["scaler"])
        scale, averaged = scaler.get_scale(), model_ema.n_averaged.item()
        train_step(model, optimizer, scaler, model_ema)
        print("resumed at epoch %d, scale %g, n_averaged %d" % (checkpoint["epoch"] + 1, scale, averaged))
    else:
        torch.manual_seed(0)
        model.train()
        train_step(model, optimizer, scaler, model_ema)
        lr_scheduler.step()
        scaler.load_state_dict({"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                                "_growth_tracker": 3})
        model_ema.n_averaged.fill_(5)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(), "epoch": 0, "args": {"amp": True, "model_ema": True},
                    "scaler": scaler.state_dict(), "model_ema": model_ema.state_dict()}, path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
