#!/usr/bin/env bash
# A node crash in the middle of training (scripts/cluster/cluster.sh crash node2: every process on node2 killed at
# once), 2 nodes x 2 ranks: the job ends within 30 s with mpirun naming the node, ddprun exits non-zero; with
# --max-restarts the job starts again on both nodes (the node is back, as after a reboot), resumes from its last
# checkpoint and ends bit-identical to an uninterrupted run. Needs root. Usage: node_crash.sh BIN_DIR SOURCE_DIR
set -euo pipefail
. "$(dirname "$0")/common.sh"
train=(ddptrain --model mnist_cnn --epochs 2 --train-limit 2048 --test-limit 256 -b 16 --seed 6 --save-every-steps 4)
"$cluster" start --nodes 2 > /dev/null
on_node1 -- "${train[@]}" --output-dir "$work/ref" > "$work/ref.out" 2>&1 || fail "the uninterrupted run failed: $(cat "$work/ref.out")"

on_node1 -- "${train[@]}" --output-dir "$work/crash" > "$work/crash.out" 2>&1 &
pid=$!
wait_for_file "$work/crash/checkpoint.pth" "checkpoint" 120
start=$(date +%s.%N)
"$cluster" crash node2
code=0
timeout 60 tail --pid="$pid" -f /dev/null || fail "ddprun still running 60 s after node2 crashed: $(cat "$work/crash.out")"
wait "$pid" || code=$?
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
[ "$code" -ne 0 ] || fail "exit code 0 after node2 crashed"
grep -q "Remote daemon: .* on node node2" "$work/crash.out" || fail "node2 not named: $(cat "$work/crash.out")"
[ "$(echo "$elapsed <= 30" | bc)" -eq 1 ] || fail "the job took $elapsed s to end after the crash (limit 30 s)"
echo "node2 crashed: the job ended after ${elapsed} s with exit code $code, node2 named by mpirun"

on_node1 --max-restarts 2 -- "${train[@]}" --output-dir "$work/restart" > "$work/restart.out" 2>&1 &
pid=$!
wait_for_file "$work/restart/checkpoint.pth" "checkpoint" 120
"$cluster" crash node2
code=0
timeout 240 tail --pid="$pid" -f /dev/null || fail "the restarted job still running after 240 s: $(cat "$work/restart.out")"
wait "$pid" || code=$?
[ "$code" -eq 0 ] || fail "exit code $code with --max-restarts 2: $(cat "$work/restart.out")"
grep -q "restart 1 of 2" "$work/restart.out" || fail "no restart: $(cat "$work/restart.out")"
/usr/bin/python3 "$source_dir/tests/e2e/same_state.py" "$work/ref/checkpoint.pth" "$work/restart/checkpoint.pth" ||
  fail "resumed after the crash is not bit-identical to the uninterrupted run"
echo "with --max-restarts: restarted after the crash, resumed from the last checkpoint, bit-identical"
echo "PASSED"
