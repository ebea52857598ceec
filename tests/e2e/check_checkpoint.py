"""Opens a ddptrain checkpoint the way a Python user would (run with /usr/bin/python3, which has torch):
torch.load, then model / optimizer / lr_scheduler into pytorch/examples' MNIST Net, SGD and StepLR, strictly.

  check_checkpoint.py PATH EPOCH LR   -> exits 0 when everything loads and matches, else prints why and exits 1
"""
import os
import sys

import torch
import torch.nn.functional as F

# pytorch/examples mnist/main.py's Net, as the PyTorch DDP reference trains it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "reference"))
from pytorch_ddp_mnist import Net  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "checkpoint"))
from interop import audit  # noqa: E402  (every opcode and global against PyTorch 2.x's weights_only allow-list)


def main(path, epoch, lr):
    audit(path)
    ckpt = torch.load(path, map_location="cpu")
    assert set(ckpt) >= {"model", "optimizer", "lr_scheduler", "epoch", "args"}, sorted(ckpt)
    # ddptrain's exact-resume entry: one random state per rank, each one Python's generator takes.
    extra = ckpt["ddprun"]
    assert extra["format_version"] == 1, extra["format_version"]
    assert len(extra["rank_states"]) == extra["world_size"], (len(extra["rank_states"]), extra["world_size"])
    assert extra["sampler"]["epoch"] == epoch + 1, extra["sampler"]  # "epoch" is the last finished one
    for state in extra["rank_states"]:
        torch.set_rng_state(state["cpu_rng_state"])
    assert ckpt["epoch"] == epoch, (ckpt["epoch"], epoch)
    model = Net()
    model.load_state_dict(ckpt["model"], strict=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    scheduler.load_state_dict(ckpt["lr_scheduler"])
    got_lr = optimizer.param_groups[0]["lr"]
    assert abs(got_lr - lr) <= 1e-12 * lr, (got_lr, lr)
    assert abs(scheduler.get_last_lr()[0] - lr) <= 1e-12 * lr, scheduler.get_last_lr()
    # The restored network works: a step of training and a forward pass in Python.
    x = torch.randn(4, 1, 28, 28)
    loss = F.nll_loss(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    scheduler.step()
    assert torch.isfinite(loss), loss
    print(f"python: {path} loads into Net/SGD/StepLR (epoch {epoch}, lr {got_lr})")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
