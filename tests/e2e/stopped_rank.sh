#!/usr/bin/env bash
# A rank stopped with SIGSTOP in the middle of training (2 ranks, --comm-timeout 5): it is alive, so mpirun sees
# nothing wrong, but the other rank's next collective times out; it names the collective and the stopped rank and
# aborts the job, which ends instead of hanging.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
mkdir -p "$work/run"
"$bin/ddprun" --np 2 -- ddptrain --model mnist_cnn -b 32 --threads 1 --train-limit 8192 --test-limit 64 --epochs 3 \
  --save-every-steps 1 --comm-timeout 5 --output-dir "$work/run" > "$work/out" 2>&1 &
pid=$!
wait_for_file "$work/run/checkpoint.pth" "checkpoint"
victim=$(rank_pid "ddptrain.*--output-dir $work/run" 1)
signal_and_wait STOP "$victim" "$pid"
cat "$work/out"
echo "SIGSTOP of rank 1: the job ended after ${elapsed} s with exit code $code"
kill -KILL "$victim" 2> /dev/null || true
[ "$code" -ne 0 ] || fail "the job exited 0 with a stopped rank"
(( $(echo "$elapsed < 40" | bc) )) || fail "the job took ${elapsed} s to end after a 5 s timeout"
# A stopped rank cannot answer the watchdog's question either: the line says so.
grep -qE "^ddprun comm: rank 0 of 2: [a-z ]+ #[0-9]+( \(.*\))? did not complete within 5 s; no answer from rank\(s\) 1 .*; aborting the job" \
  "$work/out" || fail "no timeout line that names rank 1"
echo "PASSED: a stopped rank makes the job abort after ${elapsed} s (timeout 5 s), naming it"
