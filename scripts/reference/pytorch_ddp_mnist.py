"""PyTorch's own DDP (Python, gloo, CPU) on the same task as ddptrain, for side-by-side comparison.

Same network (pytorch/examples' MNIST Net, --model mlp: ddptrain's 784-4096-4096-10 MLP, or --model resnet18:
torchvision's with a 1-channel conv1; --amp: autocast to bfloat16 with a GradScaler, as torchvision's train.py), same data and normalization, same DistributedSampler seed, SGD with
momentum and weight decay, StepLR, batch per rank, one intra-op thread per rank. Prints one line per epoch and a
final JSON line: {"impl": "pytorch_ddp", "epochs": E, "test_acc1": ..., "images_per_sec": ...}.

  /usr/bin/python3 scripts/reference/pytorch_ddp_mnist.py --ranks 2 --epochs 2 -b 64 --lr 0.05 \
      --train-limit 12000 --test-limit 2000

Across nodes, one process per rank started by mpirun (rank and world size from Open MPI's environment, gloo's
rendezvous on --master-addr), as torchrun would place them:
  mpirun -H node1:2,node2:2 -np 4 /usr/bin/python3 scripts/reference/pytorch_ddp_mnist.py --from-mpirun \
      --master-addr node1 ...
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from cpu_grad_scaler import cpu_grad_scaler


class Net(nn.Module):
    """pytorch/examples mnist/main.py's network, verbatim (names and shapes are what ddptrain's mnist_cnn matches)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class Mlp(nn.Module):
    """ddptrain's mlp: flatten, fc1 = Linear(784, 4096), ReLU, fc2 = Linear(4096, 4096), ReLU, fc3 = Linear(4096, 10)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


def make_model(name):
    if name == "mlp":
        return Mlp()
    if name == "mnist_cnn":
        return Net()
    import torchvision  # ddptrain's resnet18: torchvision's, with a 1-channel conv1 for 28x28 images
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(model, nn.LogSoftmax(dim=1))


def read_idx(path):
    with gzip.open(path) if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape).copy())


def load(folder, split, limit):
    prefix = os.path.join(folder, "train" if split == "train" else "t10k")
    images = read_idx(prefix + "-images-idx3-ubyte.gz").float().div(255).sub(0.1307).div(0.3081).unsqueeze(1)
    labels = read_idx(prefix + "-labels-idx1-ubyte.gz").long()
    if limit:
        images, labels = images[:limit], labels[:limit]
    return torch.utils.data.TensorDataset(images, labels)


def worker(rank, args):
    os.environ.setdefault("MASTER_ADDR", args.master_addr)
    os.environ.setdefault("MASTER_PORT", str(args.port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    torch.manual_seed(args.seed)
    train, test = load(args.data_path, "train", args.train_limit), load(args.data_path, "test", args.test_limit)
    sampler = torch.utils.data.DistributedSampler(train, shuffle=True, seed=args.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, sampler=sampler)
    model = nn.parallel.DistributedDataParallel(make_model(args.model))
    scaler = cpu_grad_scaler() if args.amp else None
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_step_size, gamma=args.lr_gamma)
    acc = 0.0
    rates = []
    for epoch in range(args.epochs):
        model.train()
        sampler.set_epoch(epoch)
        start = time.time()
        for images, labels in loader:
            opt.zero_grad()
            if scaler is None:
                F.nll_loss(model(images), labels).backward()
                opt.step()
                continue
            with torch.autocast("cpu", dtype=torch.bfloat16):  # torchvision's train.py --amp, on CPU
                loss = F.nll_loss(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        elapsed = torch.tensor([time.time() - start])
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        rates.append(len(sampler) * args.ranks / elapsed.item())
        sched.step()
        model.eval()
        correct = torch.zeros(2)
        with torch.no_grad():
            idx = torch.arange(rank, len(test), args.ranks)
            for b in range(0, len(idx), args.batch_size):
                images, labels = test[idx[b:b + args.batch_size]]
                correct[0] += (model(images).argmax(1) == labels).sum()
                correct[1] += len(labels)
        dist.all_reduce(correct)
        acc = 100.0 * correct[0].item() / correct[1].item()
        if rank == 0:
            print(f"pytorch_ddp epoch {epoch}: test_acc1 {acc:.2f}%  images/s {rates[-1]:.1f}", flush=True)
    if rank == 0:
        print(json.dumps({"impl": "pytorch_ddp", "model": args.model, "ranks": args.ranks, "epochs": args.epochs, "test_acc1": acc,
                          "images_per_sec": float(np.median(rates))}), flush=True)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--model", choices=["mnist_cnn", "mlp", "resnet18"], default="mnist_cnn")
    p.add_argument("--amp", action="store_true",
                   help="autocast to bfloat16 and a GradScaler (cpu_grad_scaler.py: PyTorch 1.13's, made to run on CPU)")
    p.add_argument("--data-path", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", "--wd", type=float, default=1e-4)
    p.add_argument("--lr-step-size", type=int, default=3)
    p.add_argument("--lr-gamma", type=float, default=0.1)
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--port", type=int, default=29533)
    p.add_argument("--master-addr", default="127.0.0.1", help="the host of rank 0 (gloo's rendezvous)")
    p.add_argument("--from-mpirun", action="store_true",
                   help="this process is one rank started by mpirun (OMPI_COMM_WORLD_RANK/SIZE); --ranks is ignored")
    args = p.parse_args()
    if args.from_mpirun:
        try:
            rank, args.ranks = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
        except (KeyError, ValueError):
            sys.exit("pytorch_ddp_mnist.py: --from-mpirun, but OMPI_COMM_WORLD_RANK/SIZE are not set: start it with mpirun")
        worker(rank, args)
    else:
        mp.spawn(worker, args=(args,), nprocs=args.ranks)


if __name__ == "__main__":
    main()
