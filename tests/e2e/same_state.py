"""Compares two ddptrain checkpoints the way an exact resume promises: the model's and the optimizer's tensors, the
learning-rate schedule and the epoch, bit for bit (run with /usr/bin/python3, which has torch).

  same_state.py A.pth B.pth [KEY...]  -> exits 0 when they are identical, else prints the first difference and exits 1
  (KEY: the entries to compare; model, optimizer, lr_scheduler and epoch when none is given)
"""
import sys

import torch


def flatten(value, prefix, out):
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(item, prefix + "." + str(key), out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            flatten(item, prefix + "[%d]" % i, out)
    else:
        out[prefix] = value
    return out


def main():
    a, b = (torch.load(path) for path in sys.argv[1:3])
    keys = sys.argv[3:] or ["model", "optimizer", "lr_scheduler", "epoch"]
    for key in keys:
        if key not in a or key not in b:
            sys.exit("%s: missing from %s" % (key, sys.argv[1] if key not in a else sys.argv[2]))
        fa, fb = flatten(a[key], key, {}), flatten(b[key], key, {})
        if fa.keys() != fb.keys():
            sys.exit("%s: different entries: %s" % (key, sorted(set(fa) ^ set(fb))[:5]))
        for name, va in fa.items():
            vb = fb[name]
            same = (va.dtype == vb.dtype and va.shape == vb.shape and torch.equal(va, vb)) \
                if isinstance(va, torch.Tensor) else va == vb
            if not same:
                detail = ("max abs difference %g" % (va.double() - vb.double()).abs().max().item()
                          if isinstance(va, torch.Tensor) and va.shape == vb.shape else "%r vs %r" % (va, vb))
                sys.exit("%s differs: %s" % (name, detail))
    print("identical: " + ", ".join(keys))


if __name__ == "__main__":
    main()
