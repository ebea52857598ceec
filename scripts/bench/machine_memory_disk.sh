#!/usr/bin/env bash
# What the checkpoint benchmark's figures rest on, measured on this machine: writing 1 GiB to DIR's disk with direct
# I/O and through the page cache (dd, each + fsync), and the cost of memory: filling 1 GiB the process has never
# touched, filling it again, copying between touched buffers, and copying again after they sat idle for 2 s; and
# read() of a 1 GiB file in the page cache into a buffer the process has filled, the first time and again (the kernel
# writing into the buffer, as a load straight into a model's tensors would).
#
#   scripts/bench/machine_memory_disk.sh [--repeats R] [--dir DIR]      (defaults: 3, build/bench-checkpoint)
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=3
dir=build/bench-checkpoint
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) repeats="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    *) echo "machine_memory_disk.sh: unknown flag $1 (--repeats, --dir)" >&2; exit 2 ;;
  esac
done
mkdir -p "$dir"
seconds() { sed -n 's/.* copied, \([0-9.]*\) s,.*/\1/p'; }
for ((r = 1; r <= repeats; r++)); do
  direct=$(dd if=/dev/zero of="$dir/dd.direct" bs=8M count=128 oflag=direct conv=fsync 2>&1 | seconds)
  rm -f "$dir/dd.direct"
  buffered=$(dd if=/dev/zero of="$dir/dd.buffered" bs=8M count=128 conv=fsync 2>&1 | seconds)
  rm -f "$dir/dd.buffered"
  echo "repeat $r: write 1 GiB + fsync: direct I/O $direct s, through the page cache $buffered s"
  /usr/bin/python3 - "$r" "$dir" <<'PY'
import os, sys, time
import torch
torch.set_num_threads(1)
def timed(f):
    start = time.monotonic()
    f()
    return time.monotonic() - start
a = torch.empty(1 << 30, dtype=torch.uint8)
first = timed(lambda: a.fill_(1))
again = timed(lambda: a.fill_(2))
b = torch.empty(1 << 30, dtype=torch.uint8)
b.fill_(0)
copy = timed(lambda: b.copy_(a))
time.sleep(2)
idle = timed(lambda: b.copy_(a))
print("repeat %s: 1 GiB of memory: first fill %.3f s, second fill %.3f s, copy between touched buffers %.3f s, "
      "the same copy after 2 s idle %.3f s" % (sys.argv[1], first, again, copy, idle))
path = os.path.join(sys.argv[2], "probe.bin")
with open(path, "wb") as f:
    f.write(memoryview(a.numpy()))
with open(path, "rb", buffering=0) as f:  # into the page cache
    while f.read(64 << 20):
        pass
c = torch.empty(1 << 30, dtype=torch.uint8)
c.fill_(3)
def read_into():
    with open(path, "rb", buffering=0) as f:
        view, done = memoryview(c.numpy()), 0
        while done < len(view):
            done += f.readinto(view[done:])
read_first = timed(read_into)
read_again = timed(read_into)
os.unlink(path)
print("repeat %s: read() of a 1 GiB cached file into a filled buffer: first %.3f s, again %.3f s" % (
    sys.argv[1], read_first, read_again))
PY
done
