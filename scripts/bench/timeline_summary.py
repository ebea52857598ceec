#!/usr/bin/env python3
"""Where a ddptrain step's time goes, from its --timeline trace: the mean milliseconds per step of each span on the
compute track (batch, forward, backward, step check, optimizer step), of the per-parameter all-reduce where there is
one, and "other" (the rest of the step period: the loss read, the progress line, bookkeeping), over the steps of
every epoch after the first (which pays for start-up and DDP's bucket rebuild). The period of a step is from its
batch's start to the next step's.

  timeline_summary.py TRACE [--json]

Prints one line (or, with --json, one JSON object {"steps", "period_ms", "<span>_ms"...}).
"""
import json
import sys
from collections import defaultdict

ORDER = ["batch", "forward", "backward", "all-reduce per parameter", "step check", "optimizer step"]


def summarize(path):
    with open(path) as f:
        trace = json.load(f)
    steps = defaultdict(dict)  # (epoch, step) -> name -> (ts, dur)
    for e in trace["traceEvents"]:
        if e.get("ph") != "X" or e["name"] not in ORDER:
            continue
        key = (e["args"]["epoch"], e["args"]["step"])
        steps[key][e["name"]] = (e["ts"], e["dur"])
    keys = sorted(k for k in steps if "batch" in steps[k])
    first_epoch = keys[0][0] if keys else 0
    sums, counted = defaultdict(float), 0
    for this, following in zip(keys, keys[1:]):
        if this[0] == first_epoch or following[0] != this[0]:  # the first epoch; a period across an epoch's end
            continue
        period = steps[following]["batch"][0] - steps[this]["batch"][0]
        spans = sum(d for _, d in steps[this].values())
        for name, (_, d) in steps[this].items():
            sums[name] += d
        sums["other"] += period - spans
        sums["period"] += period
        counted += 1
    if counted == 0:
        raise SystemExit("timeline_summary.py: %s has no step after the first epoch with a next one" % path)
    return counted, {name: sums[name] / counted / 1000.0 for name in sums}


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        raise SystemExit(__doc__)
    counted, ms = summarize(args[0])
    if "--json" in args:
        out = {"steps": counted, "period_ms": round(ms["period"], 3)}
        out.update({name.replace(" ", "_") + "_ms": round(ms[name], 3) for name in ORDER + ["other"] if name in ms})
        print(json.dumps(out))
        return
    parts = ["%s %.2f" % (name, ms[name]) for name in ORDER + ["other"] if name in ms]
    print("step %.2f ms over %d steps = %s" % (ms["period"], counted, " + ".join(parts)))


if __name__ == "__main__":
    main()
