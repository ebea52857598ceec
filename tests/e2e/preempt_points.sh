#!/usr/bin/env bash
# Preemption at named points, through ddprun on 2 ranks (mnist_cnn with dropout, 4 steps per epoch, 2 epochs): a
# SIGUSR1/SIGUSR2 that one rank receives (DDPRUN_INJECT_SIGNAL raises it there) after the first step of an epoch, in
# the middle of one, at its last step, and during evaluation. Every time all ranks stop at the same step boundary,
# rank 0 saves, ddprun exits with 75 and says how to continue; ddprun --resume auto then ends bit-identical to a run
# that was never preempted.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
here=$(dirname "$0")
common=(--model mnist_cnn -b 32 --train-limit 256 --test-limit 64 --threads 1 --epochs 2 --lr-step-size 1)
ddprun() { "$bin/ddprun" --np 2 -- ddptrain "${common[@]}" "$@"; }

ddprun --output-dir "$work/ref" > /dev/null 2>&1 || fail "the uninterrupted run failed"
# name|injection (SIGNAL:RANK:EPOCH:STEPS or eval)|where every rank must stop|where the resume continues
while IFS="|" read -r name injection stopped resumed; do
  dir="$work/$name"
  code=0
  DDPRUN_INJECT_SIGNAL=$injection ddprun --output-dir "$dir" > "$dir.out1" 2>&1 || code=$?
  [ "$code" -eq 75 ] || fail "$name: ddprun exited with $code, expected 75 (preempted): $(cat "$dir.out1")"
  grep -q "preempted by SIG${injection%%:*}: every rank stopped after $stopped; checkpoint saved in $dir" "$dir.out1" ||
    fail "$name: did not stop after $stopped: $(cat "$dir.out1")"
  grep -q "^ddprun: preempted: the ranks saved a checkpoint and stopped (exit code 75); start the job again with --resume auto" \
    "$dir.out1" || fail "$name: ddprun did not report the preemption: $(cat "$dir.out1")"
  ddprun --output-dir "$dir" --resume auto > "$dir.out2" 2>&1 || fail "$name: the resume failed: $(cat "$dir.out2")"
  grep -q "resumed from $dir/checkpoint.pth: continuing at $resumed with" "$dir.out2" ||
    fail "$name: the resume did not continue at $resumed: $(cat "$dir.out2")"
  /usr/bin/python3 "$here/same_state.py" "$work/ref/checkpoint.pth" "$dir/checkpoint.pth" ||
    fail "$name: preempted and resumed, not bit-identical to the uninterrupted run"
  echo "$name: stopped after $stopped, resumed at $resumed, bit-identical"
done <<CASES
first_step_of_epoch|USR1:0:1:1|epoch 1 step 1|epoch 1, step 1
middle_of_epoch|USR1:1:0:2|epoch 0 step 2|epoch 0, step 2
last_step_of_epoch|USR2:0:0:4|epoch 0 step 4|epoch 1
during_evaluation|USR2:1:0:eval|epoch 0 step 4|epoch 1
CASES
echo "PASSED: preempted after the first step of an epoch, mid-epoch, at an epoch's last step and during evaluation; each resume is bit-identical"
