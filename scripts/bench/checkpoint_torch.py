#!/usr/bin/python3
"""Python's side of scripts/bench/checkpoint.sh: torch.save (+ fsync) and torch.load of the same state that
bench/checkpoint_bench.cpp saves, with the same JSON line per op.

  checkpoint_torch.py --op save|load --state big|resnet18 [--bytes N] [--cache cold|warm] --dir DIR

Each op in a process of its own, as in checkpoint_bench: the save leaves DIR/<state>-torch.pth for the load.
"""
import argparse
import collections
import json
import os
import time

import torch


def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def big_state(nbytes):
    tensors, numel = 64, nbytes // 64 // 4
    return collections.OrderedDict(
        ("layer%d.weight" % i, torch.randn(numel)) for i in range(tensors))


def resnet18_state():
    import torchvision
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.randint(10, (2,)))
    loss.backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0}


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)


def emit(state, op, nbytes, seconds, peak_extra, cache=None):
    row = {"impl": "torch.save" if op == "save" else "torch.load", "state": state, "op": op,
           "bytes": nbytes, "seconds": round(seconds, 4), "GBps": round(nbytes / seconds / 1e9, 4),
           "peak_extra_bytes": peak_extra, "stall_s": round(seconds if op == "save" else 0, 4)}
    if cache:
        row["cache"] = cache
    print(json.dumps(row), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--op", choices=["save", "load"], required=True)
    parser.add_argument("--state", choices=["big", "resnet18"], default="big")
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cache", choices=["cold", "warm"], default="cold")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = os.path.join(args.dir, args.state + "-torch.pth")
    if args.op == "load":
        nbytes = os.path.getsize(path)
        # The destination, as train.py's model.load_state_dict and optimizer.load_state_dict fill it: tensors of the
        # saved shapes, allocated and written before the clock starts, copied into.
        destination = [torch.zeros_like(t) for t in tensors_in(torch.load(path))]
        if args.cache == "cold":  # read the disk, not the page cache, as checkpoint_bench does
            fd = os.open(path, os.O_RDONLY)
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        else:  # through one 64 MiB buffer, as checkpoint_bench does: no fresh memory touched, the pages recently used
            with open(path, "rb", buffering=0) as f:
                piece = bytearray(64 << 20)
                while f.readinto(piece):
                    pass
        before = status_bytes("VmRSS")
        reset_peak()
        start = time.monotonic()
        loaded = torch.load(path)
        with torch.no_grad():
            for into, value in zip(destination, tensors_in(loaded)):
                into.copy_(value)
        seconds = time.monotonic() - start
        emit(args.state, "load", nbytes, seconds, status_bytes("VmHWM") - before, args.cache)
        return

    state = big_state(args.bytes) if args.state == "big" else resnet18_state()
    reset_peak()
    before = status_bytes("VmRSS")
    start = time.monotonic()
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.monotonic() - start
    nbytes = os.path.getsize(path)
    emit(args.state, "save", nbytes, seconds, status_bytes("VmHWM") - before)



if __name__ == "__main__":
    main()
