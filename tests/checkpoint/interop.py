#!/usr/bin/python3
"""Python side of the checkpoint interop tests (run with Debian's /usr/bin/python3, which has torch).

  interop.py write PATH            torch.save a training checkpoint (model state_dict with a BatchNorm buffer, SGD
                                   state after one step with momentum, StepLR state, ints, floats, None, bools,
                                   nested lists, every dtype, two views of one storage) to PATH, and the same object
                                   with pickle protocol 4 to PATH.p4.
  interop.py check PATH python REF  torch.load PATH (written by C++ from what it read in REF) and compare it with REF.
  interop.py check PATH cpp         torch.load PATH and compare it with make_cpp_object() (built the same way in C++).
  interop.py check PATH weights     torch.load(PATH, weights_only=True) and compare with make_cpp_object()['state_dict'].

Every check also audits PATH's pickle: each opcode and each GLOBAL must be one PyTorch 2.x
torch.load(weights_only=True) accepts (Python 1.13's own weights_only loader refuses BINFLOAT, so it cannot be the
judge). Exits non-zero with a message on the first difference.
"""
import collections
import math
import pickletools
import sys
import zipfile

import torch

STORAGE_NAMES = ["Float", "Double", "Half", "BFloat16", "Char", "Short", "Int", "Long", "Byte", "Bool"]
ALLOWED_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2"} | {
    "torch %sStorage" % n for n in STORAGE_NAMES
}
ALLOWED_OPCODES = {
    "PROTO", "GLOBAL", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "MARK", "SETITEMS", "APPENDS", "TUPLE", "TUPLE1",
    "TUPLE2", "TUPLE3", "BINUNICODE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "NEWTRUE", "NEWFALSE",
    "NONE", "REDUCE", "BINPERSID", "BINPUT", "BINGET", "LONG_BINPUT", "LONG_BINGET", "STOP",
}


class Mismatch(Exception):
    pass


def dtype_tensors():
    """One small tensor per checkpoint dtype; test_checkpoint.cpp builds the same ones."""
    a = torch.arange
    return collections.OrderedDict([
        ("float32", (a(6).float() * 0.25 - 0.5).reshape(2, 3)),
        ("float64", a(5).double() / 3),
        ("float16", (a(4).float() * 0.5).half()),
        ("bfloat16", (a(4).float() * 1.5).bfloat16()),
        ("int8", (a(6) - 3).to(torch.int8)),
        ("int16", (a(4) * 1000 - 2000).to(torch.int16)),
        ("int32", (a(4) * 100000).to(torch.int32)),
        ("int64", (a(3) - 1) * (1 << 40)),
        ("uint8", (a(4) * 80).to(torch.uint8)),
        ("bool", a(4) % 2 == 0),
    ])


def make_cpp_object():
    """What test_checkpoint.cpp's make_cpp_object() builds."""
    base = torch.arange(12).float()
    return {
        "origin": "cpp",
        "tensors": dtype_tensors(),
        "view_row": base.view(3, 4)[1],
        "view_t": base.view(3, 4).t(),
        "scalar": torch.tensor(7),
        "empty": torch.empty(0, 3),
        "ints": [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -2**31, 2**31, -2**31 - 1, 2**40, -2**40,
                 2**63 - 1, -2**63],
        "floats": [0.0, -0.0, 1.5, -2.25, 1e300, float("inf"), float("-inf")],
        "strings": ["", "ascii", "h\u00e9llo w\u00f6rld", "\u2713 \U0001d518nicode"],
        "none": None,
        "true": True,
        "false": False,
        "nested": {
            "list": [1, [2, [3, []]]],
            "tuple": (1, "two", 3.0),
            "tuple4": (1, 2, 3, 4),
            "empty_tuple": (),
            "empty_dict": {},
            "int_keys": {0: "zero", 1: "one"},
            "od": collections.OrderedDict([("b", 1), ("a", 2)]),
        },
        "state_dict": make_state_dict(),
    }


def make_state_dict():
    return collections.OrderedDict([
        ("layer.weight", (torch.arange(6).float() / 10).reshape(3, 2)),
        ("layer.bias", torch.arange(3).float()),
        ("bn.num_batches_tracked", torch.tensor(5)),
    ])


def make_python_object():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(),
                                torch.nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()
    base = torch.arange(12).float()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": 3,
        "step": 2**40 + 5,
        "neg": -7,
        "neg_big": -(2**40),
        "loss": 0.125,
        "best": None,
        "done": False,
        "resumed": True,
        "history": [[1, 2.5], ["a", None], (3, "\u00e9")],
        "tensors": dtype_tensors(),
        "view_row": base.view(3, 4)[1],
        "view_t": base.view(3, 4).t(),
    }


def same(actual, expected, path="obj"):
    if type(actual) is not type(expected):
        raise Mismatch("%s: type %s, expected %s" % (path, type(actual).__name__, type(expected).__name__))
    if isinstance(expected, torch.Tensor):
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            raise Mismatch("%s: tensor %s%s, expected %s%s" % (path, actual.dtype, tuple(actual.shape),
                                                                expected.dtype, tuple(expected.shape)))
        if actual.stride() != expected.stride() or actual.storage_offset() != expected.storage_offset():
            raise Mismatch("%s: stride %s offset %d, expected stride %s offset %d" % (
                path, actual.stride(), actual.storage_offset(), expected.stride(), expected.storage_offset()))
        if actual.requires_grad:
            raise Mismatch("%s: requires_grad is set" % path)
        if not torch.equal(actual, expected):
            raise Mismatch("%s: values %s, expected %s" % (path, actual, expected))
    elif isinstance(expected, dict):
        if list(actual.keys()) != list(expected.keys()):
            raise Mismatch("%s: keys %s, expected %s" % (path, list(actual.keys()), list(expected.keys())))
        for k in expected:
            same(actual[k], expected[k], "%s[%r]" % (path, k))
    elif isinstance(expected, (list, tuple)):
        if len(actual) != len(expected):
            raise Mismatch("%s: length %d, expected %d" % (path, len(actual), len(expected)))
        for i, (a, e) in enumerate(zip(actual, expected)):
            same(a, e, "%s[%d]" % (path, i))
    elif isinstance(expected, float):
        if not (actual == expected and math.copysign(1, actual) == math.copysign(1, expected)):
            raise Mismatch("%s: %r, expected %r" % (path, actual, expected))
    elif actual != expected:
        raise Mismatch("%s: %r, expected %r" % (path, actual, expected))


def tensors_in(obj, out):
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            tensors_in(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            tensors_in(v, out)
    return out


def sharing(obj):
    """For each tensor in traversal order: (first tensor sharing its storage, storage size)."""
    firsts, result = {}, []
    for i, t in enumerate(tensors_in(obj, [])):
        storage = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()
        result.append((firsts.setdefault(storage.data_ptr(), i), storage.nbytes()))
    return result


def audit(path):
    """Every opcode and GLOBAL of PATH's pickle must be one PyTorch 2.x weights_only=True accepts."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise Mismatch("%s: records %s hold no single data.pkl" % (path, names))
        archive = pkl[0][: -len("data.pkl")]
        for n in names:
            rest = n[len(archive):]
            # .data/ holds what the zip writer of LibTorch 2.x adds (.data/version, .data/serialization_id).
            if not n.startswith(archive) or not (rest in ("data.pkl", "version", "byteorder")
                                                 or rest.startswith(".data/")
                                                 or (rest.startswith("data/") and rest[5:].isdigit())):
                raise Mismatch("%s: unexpected record %s" % (path, n))
        data = z.read(pkl[0])
    for opcode, arg, pos in pickletools.genops(data):
        if opcode.name not in ALLOWED_OPCODES:
            raise Mismatch("%s: opcode %s at byte %d is not in the weights_only allow-list" % (path, opcode.name, pos))
        if opcode.name == "GLOBAL" and arg not in ALLOWED_GLOBALS:
            raise Mismatch("%s: GLOBAL %r at byte %d is not in the weights_only allow-list" % (path, arg, pos))


def main(argv):
    if len(argv) >= 3 and argv[1] == "write":
        obj = make_python_object()
        torch.save(obj, argv[2])
        torch.save(obj, argv[2] + ".p4", pickle_protocol=4)
        return 0
    if len(argv) >= 4 and argv[1] == "check":
        path, kind = argv[2], argv[3]
        try:
            audit(path)
            if kind == "python" and len(argv) == 5:
                actual, expected = torch.load(path), torch.load(argv[4])
            elif kind == "cpp":
                actual, expected = torch.load(path), make_cpp_object()
            elif kind == "weights":
                actual, expected = torch.load(path, weights_only=True), make_state_dict()
            else:
                print("unknown check kind %r" % kind, file=sys.stderr)
                return 2
            same(actual, expected)
            if sharing(actual) != sharing(expected):
                raise Mismatch("storage sharing %s, expected %s" % (sharing(actual), sharing(expected)))
        except Mismatch as e:
            print("interop check failed: %s" % e, file=sys.stderr)
            return 1
        print("interop check passed: %s (%s)" % (path, kind))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
