#!/usr/bin/env bash
# Checkpoint save/load speed and memory (issue 5's benchmark): ddprun's save and load, its --async-save stall, the
# disk's ceiling (the same bytes with plain write+fsync and read), and Python's torch.save(+fsync)/torch.load, for a
# ~1 GiB state of 64 float32 tensors and for resnet18 + SGD momentum state, and the stall per checkpoint inside a
# ddptrain run with and without --async-save. Each repeat runs every implementation in
# its own process, in an order that rotates per repeat; the summary gives medians, ranges and the ratios the issue
# targets, then one JSON object per (impl, state, op) with the medians.
#
#   scripts/bench/checkpoint.sh [--repeats R] [--bytes N] [--dir DIR] [--quick]
#
# --dir must be on the disk being measured (default $BUILD_DIR/bench-checkpoint, BUILD_DIR defaulting to build; not
# a tmpfs). --quick: 64 MiB, 1 repeat
# (the ctest smoke run). Each load fills a destination that exists (tensors of the saved shapes, as a resume's model
# and optimizer), twice: cold (the file dropped from the page cache first, posix_fadvise: the disk is read) and warm
# (the file read once before). ddprun's loads also print where the time went (load_s, copy_s, crc_s).
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=3
bytes=$((1 << 30))
build=${BUILD_DIR:-build}  # where the programs are (BUILD_DIR, as the other benchmarks take it)
dir=$build/bench-checkpoint
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) repeats="$2"; shift 2 ;;
    --bytes) bytes="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --quick) repeats=1; bytes=$((64 << 20)); shift ;;
    *) echo "checkpoint.sh: unknown flag $1 (--repeats, --bytes, --dir, --quick)" >&2; exit 2 ;;
  esac
done
bench=$build/bin/checkpoint_bench
[ -x "$bench" ] || { echo "checkpoint.sh: $bench is missing; build first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$dir"
results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "checkpoint.sh: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), dir $dir ($(df -T "$dir" | awk 'NR==2 {print $2}')), $repeats repeat(s), big state $bytes bytes"
# One process per op: saves first (each leaves its file), then loads of those files.
run() {  # OP IMPL STATE [CACHE]
  local cache=()
  [ $# -gt 3 ] && cache=(--cache "$4")
  if [ "$2" = torch ]; then
    /usr/bin/python3 scripts/bench/checkpoint_torch.py --op "$1" --state "$3" --bytes "$bytes" --dir "$dir" "${cache[@]}"
  else
    "$bench" --op "$1" --impl "$2" --state "$3" --bytes "$bytes" --dir "$dir" "${cache[@]}"
  fi | tee -a "$results" | sed "s/^/  repeat $((r + 1)): /"
}
savers=(raw ddprun ddprun-async torch)
loaders=(raw ddprun torch)
for ((r = 0; r < repeats; r++)); do
  for state in big resnet18; do
    for ((k = 0; k < ${#savers[@]}; k++)); do run save "${savers[$(((k + r) % ${#savers[@]}))]}" "$state"; done
    for cache in cold warm; do
      for ((k = 0; k < ${#loaders[@]}; k++)); do run load "${loaders[$(((k + r) % ${#loaders[@]}))]}" "$state" "$cache"; done
    done
    rm -f "$dir/$state"-*.pth
  done
done

# The stall inside training: ddptrain, mlp with AdamW (weights and two moments, about 240 MB), 2 ranks, a checkpoint
# after every 8th step and at the epoch's end, with and without --async-save: metrics.jsonl's checkpoint_stall_s
# (the time the ranks were held by checkpoints in the epoch) per checkpoint.
train_limit=4096
[ "$bytes" -ge $((256 << 20)) ] || train_limit=1024
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for ((r = 0; r < repeats; r++)); do
  for mode in sync async; do
    out="$dir/train-$mode"
    rm -rf "$out"
    flags=()
    [ "$mode" = async ] && flags=(--async-save)
    mpirun --oversubscribe -np 2 "$build/bin/ddptrain" --model mlp --opt adamw --lr 0.001 -b 64 --epochs 1 \
      --train-limit "$train_limit" --test-limit 256 --save-every-steps 8 --output-dir "$out" "${flags[@]}" > "$out.log" 2>&1 ||
      { cat "$out.log" >&2; exit 1; }
    saves=$(( (train_limit / 128 - 1) / 8 + 1 ))
    /usr/bin/python3 -c '
import json, os, sys
m = json.loads(open(sys.argv[1]).readline())
size = os.path.getsize(sys.argv[2])
print(json.dumps({"impl": sys.argv[3], "state": "ddptrain-mlp-adamw", "op": "train-stall", "bytes": size,
                  "seconds": m["checkpoint_stall_s"], "GBps": 0, "peak_extra_bytes": 0,
                  "stall_s": m["checkpoint_stall_s"] / int(sys.argv[4])}))' \
      "$out/metrics.jsonl" "$out/checkpoint.pth" "$([ "$mode" = async ] && echo ddprun-async || echo ddprun)" "$saves" |
      tee -a "$results" | sed "s/^/  repeat $((r + 1)): /"
    rm -rf "$out" "$out.log"
  done
done

/usr/bin/python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
if not rows:
    sys.exit("checkpoint.sh: no results")
groups = {}
for row in rows:
    op = row["op"] + ("-" + row["cache"] if "cache" in row else "")
    groups.setdefault((row["impl"], row["state"], op), []).append(row)

def med(impl, state, op, key):
    values = [r[key] for r in groups.get((impl, state, op), [])]
    return statistics.median(values) if values else None

def spread(impl, state, op, key):
    values = [r[key] for r in groups.get((impl, state, op), [])]
    return "%.3f-%.3f" % (min(values), max(values)) if values else "-"

failed = []
print("\nmedians (range) per state; GB/s are bytes of the file / seconds")
stall_sync = med("ddprun", "ddptrain-mlp-adamw", "train-stall", "stall_s")
stall_async = med("ddprun-async", "ddptrain-mlp-adamw", "train-stall", "stall_s")
if stall_sync:
    print("ddptrain, mlp + AdamW (%d bytes per checkpoint), 2 ranks: training stall per checkpoint %.3f s (%s) "
          "synchronous, %.3f s (%s) with --async-save: %.3f of it" % (
              med("ddprun", "ddptrain-mlp-adamw", "train-stall", "bytes"), stall_sync,
              spread("ddprun", "ddptrain-mlp-adamw", "train-stall", "stall_s"), stall_async,
              spread("ddprun-async", "ddptrain-mlp-adamw", "train-stall", "stall_s"), stall_async / stall_sync))
for state in ("big", "resnet18"):
    size = med("ddprun", state, "save", "bytes")
    print("%s (%d bytes):" % (state, size))
    for impl, op in (("raw", "save"), ("ddprun", "save"), ("ddprun-async", "save"), ("torch.save", "save"),
                     ("raw", "load-cold"), ("ddprun", "load-cold"), ("torch.load", "load-cold"),
                     ("raw", "load-warm"), ("ddprun", "load-warm"), ("torch.load", "load-warm")):
        if (impl, state, op) in groups:
            print("  %-13s %-9s %7.3f GB/s (%s)  stall %.3f s  peak extra %.1f MiB" % (
                impl, op, med(impl, state, op, "GBps"), spread(impl, state, op, "GBps"),
                med(impl, state, op, "stall_s"), med(impl, state, op, "peak_extra_bytes") / 2**20))
    for cache in ("cold", "warm"):
        op = "load-" + cache
        if ("ddprun", state, op) in groups:
            print("  ddprun %s: load %.3f s (%s) = checkpoint::load %.3f s (one read of every record with its CRC-32, "
                  "which alone takes %.3f s; the pickle) + copy from the mapping into the destination %.3f s" % (
                      op, med("ddprun", state, op, "seconds"), spread("ddprun", state, op, "seconds"),
                      med("ddprun", state, op, "load_s"), med("ddprun", state, op, "crc_s"),
                      med("ddprun", state, op, "copy_s")))
    ratios = [
        ("save: ddprun / raw write+fsync", med("ddprun", state, "save", "GBps") / med("raw", state, "save", "GBps"), 0.95),
        ("save: ddprun / torch.save", med("ddprun", state, "save", "GBps") / med("torch.save", state, "save", "GBps"), 1.0),
    ]
    for cache in ("cold", "warm"):
        op = "load-" + cache
        ratios += [
            ("load %s: ddprun / raw read" % cache, med("ddprun", state, op, "GBps") / med("raw", state, op, "GBps"), 0.9),
            ("load %s: ddprun / torch.load" % cache,
             med("ddprun", state, op, "GBps") / med("torch.load", state, op, "GBps"), 1.2),
        ]
    for name, value, target in ratios:
        verdict = "met" if value >= target else "MISSED"
        print("  %-34s %.2f (target >= %.2f: %s)" % (name, value, target, verdict))
        if value < target:
            failed.append(state + " " + name)
    extra = med("ddprun", state, "save", "peak_extra_bytes") / size
    print("  %-34s %.3f (target < 0.10: %s)" % ("sync save peak extra / size", extra, "met" if extra < 0.1 else "MISSED"))
    stall = med("ddprun-async", state, "save", "stall_s") / med("ddprun", state, "save", "stall_s")
    applies = size >= 256 * 2**20
    print("  %-34s %.3f (target < 0.10 for >= 256 MiB: %s; first save's stall %.3f s)" % (
        "async stall / sync save time", stall, ("met" if stall < 0.1 else "MISSED") if applies else "n/a",
        med("ddprun-async", state, "save", "first_stall_s")))
print()
for (impl, state, op), _ in sorted(groups.items()):
    print(json.dumps({"impl": "torch.save" if impl == "torch.load" else impl, "state": state, "op": op,
                      "bytes": int(med(impl, state, op, "bytes")), "GBps": round(med(impl, state, op, "GBps"), 4),
                      "peak_extra_bytes": int(med(impl, state, op, "peak_extra_bytes")),
                      "stall_s": round(med(impl, state, op, "stall_s"), 4)}))
PY
