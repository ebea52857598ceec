"""Loads a checkpoint the library wrote (test_library_checkpoint) into torch.nn.Linear(4, 3) and the named
torch.optim class, and takes one step: exits 0 when all of it works. The pickle is first checked against PyTorch
2.x's weights_only allow-list (Python 1.13's own weights_only loader refuses floats, see tests/checkpoint/interop.py).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "checkpoint"))
from interop import audit  # noqa: E402

path, name = sys.argv[1], sys.argv[2]
audit(path)
saved = torch.load(path, map_location="cpu")
net = torch.nn.Linear(4, 3)
net.load_state_dict(saved["model"])
optimizer = getattr(torch.optim, name)(net.parameters(), lr=0.5)
optimizer.load_state_dict(saved["optimizer"])
want = {"SGD": {"momentum_buffer"}, "Adam": {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
        "AdamW": {"step", "exp_avg", "exp_avg_sq"}}[name]
for p in net.parameters():
    have = set(optimizer.state[p].keys())
    if not want <= have:
        sys.exit(f"load_in_python: {name} state of a parameter has {sorted(have)}, wants {sorted(want)}")
if optimizer.param_groups[0]["lr"] == 0.5:
    sys.exit("load_in_python: the file's learning rate did not replace the constructor's")
net(torch.randn(2, 4)).sum().backward()
optimizer.step()
print(f"load_in_python: {name} loaded and stepped")
