#!/usr/bin/env bash
# A NaN or inf loss (here --lr 900: finite weights until the 4th step's loss overflows) stops training at that step
# boundary on every rank, before the update, with one line naming the rank, epoch and step, exit code 4, and the
# last checkpoint untouched; ddprun does not restart it (it would diverge again). Before, the run trained on with
# "train_loss -nan" and exited 0. --nan-policy skip-step skips such steps' updates on every rank and trains on.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
small=(--model mnist_cnn --epochs 2 --train-limit 512 --test-limit 64 --threads 1 -b 64 --lr 900)

code=0
"$bin/ddprun" --np 2 --max-restarts 2 --restart-delay 0 -- ddptrain "${small[@]}" --save-every-steps 1 \
  --output-dir "$work/stop" > "$work/stop.out" 2> "$work/stop.err" || code=$?
cat "$work/stop.err"
[ "$code" -eq 4 ] || fail "exit code $code, expected 4 (diverged)"
grep -qE "^ddptrain: error( on rank [01])?: the loss was NaN or inf on rank [01] at epoch 0 step [0-9]+: every rank stopped before that step's update; the last checkpoint is kept \(--lr 900\); lower --lr, or use --nan-policy skip-step$" \
  "$work/stop.err" || fail "no single clear line about the NaN"
grep -q "^ddprun: the job failed: exit code 4 (training diverged: a NaN or inf loss); not restarting: it would fail the same way" \
  "$work/stop.err" || fail "ddprun restarted (or did not explain) a diverged run"
grep -q "train_loss -\?nan" "$work/stop.out" && fail "an epoch with a NaN loss was reported"
step=$(grep -oE "at epoch 0 step [0-9]+" "$work/stop.err" | grep -oE "[0-9]+$")
/usr/bin/python3 - "$work/stop/checkpoint.pth" "$step" <<'PY' || fail "the last checkpoint is not the good one before the NaN step"
import sys, torch
ck = torch.load(sys.argv[1])
assert ck["ddprun"]["step_in_epoch"] == int(sys.argv[2]), (ck["ddprun"]["step_in_epoch"], sys.argv[2])
assert all(torch.isfinite(t).all() for t in ck["model"].values()), "non-finite weights were saved"
PY
echo "stop: exit 4 at step $step; checkpoint.pth is the one saved before that step, with finite weights"

code=0
"$bin/ddprun" --np 2 -- ddptrain "${small[@]}" --nan-policy skip-step --output-dir "$work/skip" \
  > "$work/skip.out" 2> "$work/skip.err" || code=$?
skipped=$(grep -c "every rank skipped that step's update (NanPolicy::SkipStep)" "$work/skip.err" || true)
[ "$skipped" -ge 1 ] || fail "no step was skipped: $(cat "$work/skip.err")"
case $code in
  0) grep -q "^epoch 1/1" "$work/skip.out" || fail "skip-step did not train to the end" ;;
  4) grep -q "th step in a row: training has diverged" "$work/skip.err" || fail "exit 4 without the reason" ;;
  *) fail "skip-step: exit code $code: $(cat "$work/skip.err")" ;;
esac
echo "skip-step: $skipped step(s) skipped on every rank, exit code $code"
echo "PASSED: a NaN loss stops every rank before the update (exit 4, not restarted) or is skipped"
