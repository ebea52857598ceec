#!/usr/bin/env bash
# --timeline writes a Chrome trace of rank 0's steps: batch, forward, backward, step check and optimizer step per step
# (in that order, none overlapping), and per step
# every bucket's all-reduce (together all of mnist_cnn's gradient bytes), the first bucket going out while backward
# still runs (the overlap the engine is for). With {rank} in the name every rank writes its own trace, and the ranks'
# traces share a time axis: rank 1's process starts a second late, yet each step's last all-reduce (which the ranks
# leave together) ends at the same time in both files.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
mpirun --oversubscribe -np 2 "$bin/ddptrain" --epochs 1 --train-limit 512 --test-limit 64 --threads 1 \
  --output-dir "$work/out" --timeline "$work/trace.json" > /dev/null
python3 - "$work/trace.json" <<'PY'
import collections, json, sys
trace = json.load(open(sys.argv[1]))
spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
steps = collections.defaultdict(dict)
buckets = []
for e in spans:
    if e["name"].startswith("all-reduce bucket"):
        buckets.append(e)
    else:
        steps[e["args"]["step"]][e["name"]] = e
assert len(steps) == 4, f"4 steps expected (512 images / 2 ranks / batch 64), got {len(steps)}"
for step, names in steps.items():
    order = ["batch", "forward", "backward", "step check", "optimizer step"]
    assert set(names) == set(order), (step, sorted(names))
    for a, b in zip(order, order[1:]):
        assert names[a]["ts"] + names[a]["dur"] <= names[b]["ts"] + 1, (step, a, b)  # 1 us of rounding
assert len(buckets) == 4 * 2, f"mnist_cnn has 2 buckets per step, got {len(buckets)} bucket spans"
per_step = [buckets[i:i + 2] for i in range(0, len(buckets), 2)]
for spans_of_step in per_step:
    assert sum(b["args"]["bytes"] for b in spans_of_step) == 1199882 * 4, spans_of_step
overlapped = 0
for step, names in steps.items():
    backward = names["backward"]
    first = min((b for b in buckets if backward["ts"] <= b["ts"] <= backward["ts"] + backward["dur"]),
                key=lambda b: b["ts"], default=None)
    overlapped += first is not None
assert overlapped == 4, f"a bucket went out during backward in {overlapped} of 4 steps"
print("PASSED: 4 steps, 8 bucket all-reduces, each step's first bucket sent during backward")
PY

mpirun --oversubscribe -np 2 sh -c '[ "$OMPI_COMM_WORLD_RANK" = 1 ] && sleep 1; exec "$@"' sh "$bin/ddptrain" --epochs 1 \
  --train-limit 512 --test-limit 64 --threads 1 --output-dir "$work/out2" --timeline "$work/out2/trace-{rank}.json" > /dev/null  # (out2 is created by the run)
[ ! -e "$work/out2/trace-{rank}.json" ] || fail "--timeline wrote the file name with {rank} in it"
python3 - "$work/out2/trace-0.json" "$work/out2/trace-1.json" <<'PY'
import json, statistics, sys
ends = []
for rank, path in enumerate(sys.argv[1:]):
    trace = json.load(open(path))
    assert trace["otherData"]["rank"] == rank, (path, trace["otherData"])
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {rank}, f"{path}: process ids {sorted({e['pid'] for e in spans})}, not {rank}"
    buckets = [e for e in spans if e["name"] == "all-reduce bucket 1"]  # each step's last
    assert len(buckets) == 4, f"{path}: {len(buckets)} spans of bucket 1, 4 expected"
    ends.append([b["ts"] + b["dur"] for b in buckets])
gap_ms = statistics.median(abs(a - b) for a, b in zip(*ends)) / 1000
assert gap_ms < 50, f"the ranks' traces are {gap_ms:.1f} ms apart where both left the same all-reduce"
print(f"PASSED: a trace per rank; the ranks' last all-reduce ends {gap_ms:.2f} ms apart (median of 4 steps)")
PY
