#!/usr/bin/env bash
# The all-reduce benchmark across 2 simulated nodes (scripts/bench/allreduce.sh --hosts, --quick: 4 KiB to 1 MiB)
# runs end to end: the ratio table against Open MPI's flat default and a JSON line with the hosts per implementation
# and size. Needs root. Usage: bench_smoke.sh BIN_DIR SOURCE_DIR
set -euo pipefail
. "$(dirname "$0")/common.sh"
BUILD_DIR=$(dirname "$bin") "$source_dir/scripts/bench/allreduce.sh" --hosts node1:2,node2:2 --link-rate 1gbit --quick \
  > "$work/out" 2>&1 || fail "the benchmark failed: $(cat "$work/out")"
cat "$work/out"
grep -q "ddprun/flat" "$work/out" || fail "no ratio table"
grep -q "sizes miss a goal" "$work/out" || fail "no goal summary"
for impl in ddprun flat; do
  for bytes in 4096 65536 1048576; do
    grep -qE "^\{\"impl\": \"$impl\", \"ranks\": 4, \"hosts\": \"node1:2,node2:2\", \"bytes\": $bytes, \"busbw_GBps\": [0-9.]+[,}]" "$work/out" ||
      fail "no JSON line for $impl at $bytes bytes"
  done
done
echo PASSED
