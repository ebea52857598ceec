"""What Python's PyTorch computes, for the trainer tests to compare against (run with /usr/bin/python3).

  sampler N WORLD SEED EPOCH   -> one line per rank: DistributedSampler(shuffle=True) indices
  steplr LR STEP GAMMA EPOCHS  -> the learning rate of each epoch under StepLR
"""
import sys

import torch
from torch.utils.data import DistributedSampler


def main(argv):
    mode = argv[1]
    if mode == "sampler":
        n, world, seed, epoch = (int(a) for a in argv[2:6])
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            print(" ".join(str(i) for i in sampler))
    elif mode == "steplr":
        lr, step, gamma, epochs = float(argv[2]), int(argv[3]), float(argv[4]), int(argv[5])
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=gamma)
        rates = []
        for _ in range(epochs):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        print(" ".join(repr(r) for r in rates))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
