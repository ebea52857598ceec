#!/usr/bin/env bash
# A rank that dies (SIGKILL) on 2 ranks (mnist_cnn with dropout): mpirun names the dead rank and ddprun ends the job
# within 30 s with its exit code (137); with --max-restarts, ddprun starts the job again with --resume auto from the
# last checkpoint and it ends bit-identical to a run that never failed. A failure before training started (missing
# data) is not restarted.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
here=$(dirname "$0")
common=(--model mnist_cnn -b 32 --threads 1 --lr-step-size 1 --test-limit 64)
small=("${common[@]}" --train-limit 256 --epochs 2)  # 4 steps per epoch on 2 ranks

# Killed after step 3 of epoch 0 (the last checkpoint is after step 2), restarted once: the same final state.
"$bin/ddprun" --np 2 -- ddptrain "${small[@]}" --output-dir "$work/ref" > /dev/null 2>&1 || fail "the reference run failed"
code=0
DDPRUN_INJECT_SIGNAL=KILL:1:0:3 "$bin/ddprun" --np 2 --max-restarts 2 --restart-delay 0.2 -- \
  ddptrain "${small[@]}" --save-every-steps 2 --output-dir "$work/killed" > "$work/killed.out" 2>&1 || code=$?
[ "$code" -eq 0 ] || fail "the restarted job exited with $code: $(cat "$work/killed.out")"
grep -qE "process rank 1 with PID [0-9]+ on node .* exited on signal 9" "$work/killed.out" ||
  fail "no line names the rank that died: $(cat "$work/killed.out")"
grep -q "^ddprun: the job failed: exit code 137 (a rank was killed by SIGKILL); restart 1 of 2 in 0.2 s, with --resume auto" \
  "$work/killed.out" || fail "ddprun did not report the restart: $(cat "$work/killed.out")"
grep -q "resumed from $work/killed/checkpoint.pth: continuing at epoch 0, step 2 with" "$work/killed.out" ||
  fail "the restart did not continue from the last checkpoint: $(cat "$work/killed.out")"
grep -q "ddprun restart 1" "$work/killed.out" || fail "the restarted ranks do not say they are a restart"
grep -q "^ddprun: the job finished after 1 restart(s)" "$work/killed.out" || fail "no final report"
/usr/bin/python3 "$here/same_state.py" "$work/ref/checkpoint.pth" "$work/killed/checkpoint.pth" ||
  fail "killed, restarted and resumed: not bit-identical to the uninterrupted run"

# kill -9 from outside, no restarts: the job ends within 30 s, the dead rank is named, the exit code is 137.
mkdir -p "$work/long"
"$bin/ddprun" --np 2 -- ddptrain "${common[@]}" --train-limit 8192 --epochs 3 --save-every-steps 1 \
  --output-dir "$work/long" > "$work/long.out" 2>&1 &
pid=$!
wait_for_file "$work/long/checkpoint.pth" "checkpoint"
victim=$(rank_pid "ddptrain.*--output-dir $work/long" 1)
signal_and_wait KILL "$victim" "$pid"
echo "kill -9 of rank 1: the job ended after ${elapsed} s with exit code $code"
[ "$code" -eq 137 ] || fail "exit code $code after kill -9 of a rank, expected 137: $(cat "$work/long.out")"
(( $(echo "$elapsed < 30" | bc) )) || fail "the job took ${elapsed} s to end after a rank died"
grep -qE "process rank 1 with PID [0-9]+ on node .* exited on signal 9" "$work/long.out" ||
  fail "no line names rank 1 as the one that died: $(cat "$work/long.out")"
grep -q "^ddprun: the job failed: exit code 137 (a rank was killed by SIGKILL)$" "$work/long.out" ||
  fail "ddprun's last line is missing: $(cat "$work/long.out")"

# Bad data fails before training: not worth a restart.
code=0
"$bin/ddprun" --np 2 --max-restarts 3 --restart-delay 0 -- ddptrain "${small[@]}" --data-path "$work/nowhere" \
  --output-dir "$work/bad" > "$work/bad.out" 2>&1 || code=$?
[ "$code" -eq 3 ] || fail "exit code $code for missing data, expected 3: $(cat "$work/bad.out")"
grep -q "^ddprun: the job failed: exit code 3 (failed before training started); not restarting: it would fail the same way" \
  "$work/bad.out" || fail "no word of why it is not restarted: $(cat "$work/bad.out")"
[ "$(grep -c "cannot load the data set" "$work/bad.out")" -eq 1 ] || fail "the job was started more than once"
echo "PASSED: a killed rank is named and ends the job in ${elapsed} s; restarted, the job ends bit-identical; set-up failures are not restarted"
