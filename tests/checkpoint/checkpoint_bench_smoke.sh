#!/usr/bin/env bash
# The checkpoint benchmark runs end to end (--quick: a 64 MiB state, 1 repeat, a short ddptrain run) and ends with
# the ratios the issue targets, the breakdown of ddprun's cold and warm loads, and one JSON line per implementation
# and op (loads: load-cold and load-warm).
# Usage: checkpoint_bench_smoke.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/../e2e/common.sh"
BUILD_DIR=$1 "$(dirname "$0")/../../scripts/bench/checkpoint.sh" --quick --dir "$work/bench" > "$work/out"
cat "$work/out"
for state in big resnet18; do
  for pair in "ddprun save" "ddprun load-cold" "ddprun load-warm" "ddprun-async save" "raw save" "raw load-cold" \
              "raw load-warm" "torch.save save" "torch.save load-cold" "torch.save load-warm"; do
    set -- $pair
    grep -qE "^\{\"impl\": \"$1\", \"state\": \"$state\", \"op\": \"$2\", \"bytes\": [0-9]+, \"GBps\": [0-9.]+, \"peak_extra_bytes\": -?[0-9]+, \"stall_s\": [0-9.]+\}$" \
      "$work/out" || fail "no JSON line for $1 $2 of $state"
  done
  grep -q "save: ddprun / raw write+fsync" "$work/out" || fail "no save ratio"
  for cache in cold warm; do
    grep -q "load $cache: ddprun / raw read" "$work/out" || fail "no $cache load ratio"
    grep -qE "ddprun load-$cache: load [0-9.]+ s \(.*\) = checkpoint::load [0-9.]+ s \(one read of every record with its CRC-32, which alone takes [0-9.]+ s; the pickle\) \+ copy from the mapping into the destination [0-9.]+ s" \
      "$work/out" || fail "no breakdown of the $cache load"
  done
done
for impl in ddprun ddprun-async; do
  grep -q "^{\"impl\": \"$impl\", \"state\": \"ddptrain-mlp-adamw\", \"op\": \"train-stall\"" "$work/out" ||
    fail "no training stall for $impl"
done
echo PASSED
