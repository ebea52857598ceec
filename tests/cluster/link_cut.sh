#!/usr/bin/env bash
# A node cut off in the middle of training (scripts/cluster/cluster.sh link node2 down), 2 nodes x 2 ranks:
# every rank on node1 stops within the comm timeout with one line naming the ranks that no longer answer and their
# node, ddprun ends mpirun (which waits forever for the node it cannot reach) and exits 1. With --max-restarts, once
# the link is back the job resumes from its last checkpoint and ends bit-identical to an uninterrupted run.
# Needs root. Usage: link_cut.sh BIN_DIR SOURCE_DIR
set -euo pipefail
. "$(dirname "$0")/common.sh"
timeout=8
train=(ddptrain --model mnist_cnn --epochs 2 --train-limit 2048 --test-limit 256 -b 16 --seed 5 --save-every-steps 4
  --comm-timeout "$timeout")

# wait_for_steps DIR: until a mid-epoch checkpoint exists (training is under way).
wait_for_checkpoint() { wait_for_file "$1/checkpoint.pth" "checkpoint in $1" 120; }

"$cluster" start --nodes 2 > /dev/null
on_node1 -- "${train[@]}" --output-dir "$work/ref" > "$work/ref.out" 2>&1 || fail "the uninterrupted run failed: $(cat "$work/ref.out")"

# The cut, without restarts: how long until ddprun returns, and what it says.
on_node1 -- "${train[@]}" --output-dir "$work/cut" > "$work/cut.out" 2>&1 &
pid=$!
wait_for_checkpoint "$work/cut"
start=$(date +%s.%N)
"$cluster" link node2 down
code=0
timeout 120 tail --pid="$pid" -f /dev/null || fail "ddprun still running 120 s after the cut: $(cat "$work/cut.out")"
wait "$pid" || code=$?
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
"$cluster" link node2 up
[ "$code" -eq 1 ] || fail "exit code $code after the cut, expected 1: $(cat "$work/cut.out")"
# Whichever rank of node1 times out first says it (rank 0 or 1: both wait in the same collective; the first aborts).
grep -q "ddprun comm: rank [01] of 4: .* did not complete within $timeout s; no answer from rank(s) 2, 3 on node2 (every rank of node2: is the node down or cut off" "$work/cut.out" ||
  fail "no rank of node1 named ranks 2 and 3 on node2: $(cat "$work/cut.out")"
grep -q "ddprun: a rank aborted the job 10 s ago and mpirun has not ended it" "$work/cut.out" ||
  fail "ddprun did not say it ended mpirun: $(cat "$work/cut.out")"
# comm timeout + the watchdog's period and query (about 4 s) + ddprun's 10 s grace + the leftovers' 1 s
[ "$(echo "$elapsed < $timeout + 25" | bc)" -eq 1 ] || fail "ddprun returned $elapsed s after the cut"
echo "link cut: every rank on node1 stopped, ddprun returned with exit code 1 after ${elapsed} s (--comm-timeout $timeout)"
"$cluster" stop > /dev/null  # what was left on node2 (its ranks wait for a job that is gone)
"$cluster" start --nodes 2 > /dev/null

# The same cut with --max-restarts: the restart fails while the link is down, then resumes once it is back.
on_node1 --max-restarts 3 --restart-delay 2 -- "${train[@]}" --output-dir "$work/restart" > "$work/restart.out" 2>&1 &
pid=$!
wait_for_checkpoint "$work/restart"
"$cluster" link node2 down
for _ in $(seq 600); do grep -q "restart 1 of 3" "$work/restart.out" && break; sleep 0.1; done
grep -q "restart 1 of 3" "$work/restart.out" || fail "no restart after the cut: $(cat "$work/restart.out")"
"$cluster" link node2 up
code=0
timeout 240 tail --pid="$pid" -f /dev/null || fail "the restarted job still running after 240 s: $(cat "$work/restart.out")"
wait "$pid" || code=$?
[ "$code" -eq 0 ] || fail "exit code $code with --max-restarts 3: $(cat "$work/restart.out")"
/usr/bin/python3 "$source_dir/tests/e2e/same_state.py" "$work/ref/checkpoint.pth" "$work/restart/checkpoint.pth" ||
  fail "resumed after the cut is not bit-identical to the uninterrupted run"
echo "with --max-restarts: $(grep -c 'restart [0-9] of 3' "$work/restart.out") restart(s), resumed from the last checkpoint, bit-identical"
echo "PASSED"
