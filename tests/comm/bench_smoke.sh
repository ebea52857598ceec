#!/usr/bin/env bash
# The all-reduce benchmark runs end to end (--quick: 4 KiB to 1 MiB) and ends with a JSON line per implementation
# and size, for ddprun, raw MPI and gloo. Usage: bench_smoke.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/../e2e/common.sh"
BUILD_DIR=$1 "$(dirname "$0")/../../scripts/bench/allreduce.sh" --ranks 2 --quick > "$work/out"
cat "$work/out"
grep -q "ddprun/mpi" "$work/out" || fail "no ratio table"
for impl in ddprun mpi gloo; do
  for bytes in 4096 65536 1048576; do
    grep -qE "^\{\"impl\": \"$impl\", \"ranks\": 2, \"bytes\": $bytes, \"busbw_GBps\": [0-9.]+[,}]" "$work/out" ||
      fail "no JSON line for $impl at $bytes bytes"
  done
done
echo PASSED
