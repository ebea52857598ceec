#!/usr/bin/env bash
# Before/after of a change to checkpoint loading: checkpoint_bench's loads (into an existing destination, cold and
# warm, big and resnet18) from two builds, interleaved with raw read() in each repeat, on the same files; prints the
# medians, ranges and the paired ratio per repeat. The other build is usually an older commit's:
#
#   git worktree add /tmp/before <commit> && cp bench/checkpoint_bench.cpp /tmp/before/bench/ &&
#     cmake -S /tmp/before -B /tmp/before/build -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
#     cmake --build /tmp/before/build --target checkpoint_bench
#   scripts/bench/checkpoint_load_compare.sh --before /tmp/before/build [--repeats 5] [--dir DIR]
#
# (this tree's bench/checkpoint_bench.cpp copied there, so that both sides time the same thing; it needs
# checkpoint::crc32_update, which the older trees lack: the copy's crc_s line may need crc32_of instead.)
set -euo pipefail
cd "$(dirname "$0")/../.."
before="" repeats=5 dir=${BUILD_DIR:-build}/bench-checkpoint after=${BUILD_DIR:-build}
while [ $# -gt 0 ]; do
  case "$1" in
    --before) before="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    *) echo "checkpoint_load_compare.sh: unknown flag $1 (--before BUILD, --repeats R, --dir DIR)" >&2; exit 2 ;;
  esac
done
[ -x "$before/bin/checkpoint_bench" ] || { echo "checkpoint_load_compare.sh: no $before/bin/checkpoint_bench" >&2; exit 2; }
cmake --build "$after" --target checkpoint_bench > /dev/null
mkdir -p "$dir"
new=$after/bin/checkpoint_bench old=$before/bin/checkpoint_bench
for state in big resnet18; do
  "$new" --op save --impl ddprun --state "$state" --dir "$dir" > /dev/null
  "$new" --op save --impl raw --state "$state" --dir "$dir" > /dev/null
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "checkpoint_load_compare.sh: $(nproc) cores, before $before, after $after, $repeats repeats"
for ((r = 1; r <= repeats; r++)); do
  for state in big resnet18; do
    for cache in cold warm; do
      for side in before after raw; do
        case $side in
          before) line=$("$old" --op load --impl ddprun --state "$state" --dir "$dir" --cache "$cache") ;;
          after) line=$("$new" --op load --impl ddprun --state "$state" --dir "$dir" --cache "$cache") ;;
          raw) line=$("$new" --op load --impl raw --state "$state" --dir "$dir" --cache "$cache") ;;
        esac
        echo "$r $side $line" | tee -a "$out"
      done
    done
  done
done
/usr/bin/python3 - "$out" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    repeat, side, text = line.split(" ", 2)
    m = json.loads(text)
    runs[(m["state"], m["cache"], side)].append(m["seconds"])
print("\nseconds per load, median (range); before/after paired per repeat:")
for state in ("big", "resnet18"):
    for cache in ("cold", "warm"):
        cells = []
        for side in ("before", "after", "raw"):
            v = runs[(state, cache, side)]
            cells.append("%s %.3f (%.3f-%.3f)" % (side, statistics.median(v), min(v), max(v)))
        pairs = [b / a for b, a in zip(runs[(state, cache, "before")], runs[(state, cache, "after")])]
        print("%-8s %-4s %s  before/after %.2f (per repeat %s)" % (
            state, cache, "  ".join(cells), statistics.median(pairs), " ".join("%.2f" % p for p in pairs)))
PY
