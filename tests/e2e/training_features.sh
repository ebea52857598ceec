#!/usr/bin/env bash
# ddptrain's torchvision features on 2 ranks (--amp, --clip-grad-norm, --model-ema with a warm-up epoch): the EMA's
# accuracy and the scaler's scale in metrics.jsonl; a mid-epoch stop (in the warm-up, and after it) resumed with
# --resume auto ends bit-identical to an uninterrupted run, model_ema and scaler included, and so does resnet18 with
# --sync-bn on top; Python's train.py objects
# load ddptrain's checkpoint (load_state_dict of model, model_ema, optimizer, lr_scheduler, scaler) and train on;
# ddptrain resumes a checkpoint Python wrote, its scaler and average continuing where Python left them; --test-only
# scores the average beside the model.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
here=$(dirname "$0")
common=(--threads 1 --epochs 2 --lr-step-size 1
        --amp --clip-grad-norm 1.0 --model-ema --model-ema-steps 2 --model-ema-decay 0.999 --lr-warmup-epochs 1)
model=(--model mnist_cnn -b 16 --train-limit 192 --test-limit 64)
run() {  # run FOLDER FLAGS...
  local dir=$1
  shift
  mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" "${model[@]}" --output-dir "$dir" "$@"
}
same() {
  /usr/bin/python3 "$here/same_state.py" "$1" "$2" model optimizer lr_scheduler epoch model_ema scaler || fail "$3"
}

# 192 samples on 2 ranks, 16 per step: 6 steps per epoch.
run "$work/ref" > "$work/ref.out" 2>&1 || fail "the run failed: $(cat "$work/ref.out")"
grep -q "ema: test_acc1 .*amp scale" "$work/ref.out" || fail "no EMA accuracy or scale in the epoch line: $(cat "$work/ref.out")"
[ "$(grep -c '"test_acc1_ema": [0-9.]*, "test_acc5_ema": [0-9.]*, "amp_scale": [0-9.]*, "amp_skipped_steps": 0' \
  "$work/ref/metrics.jsonl")" -eq 2 ] || fail "metrics.jsonl lacks the EMA's accuracy or the scale: $(cat "$work/ref/metrics.jsonl")"

# --test-only scores the checkpoint's average too, on the same line.
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" "${model[@]}" --output-dir "$work/ref" --test-only \
  --resume "$work/ref/checkpoint.pth" > "$work/test_only.out" 2>&1 || fail "--test-only failed: $(cat "$work/test_only.out")"
grep -qE "^ddptrain: --test-only: .*test_acc1 [0-9.]+%  test_acc5 [0-9.]+%  ema: test_acc1 [0-9.]+%  test_acc5 [0-9.]+%$" \
  "$work/test_only.out" || fail "--test-only did not score the average: $(cat "$work/test_only.out")"

for stop in 3 8; do  # in the warm-up epoch (n_averaged is zeroed there), and in epoch 1
  dir="$work/stop$stop"
  run "$dir" --stop-after-steps "$stop" > "$dir.out1" 2>&1 || fail "stopping after $stop steps failed: $(cat "$dir.out1")"
  run "$dir" --resume auto > "$dir.out2" 2>&1 || fail "the resume after $stop steps failed: $(cat "$dir.out2")"
  same "$work/ref/checkpoint.pth" "$dir/checkpoint.pth" "stopped after $stop steps and resumed: not bit-identical"
done

# Every feature at once, --sync-bn included (resnet18, 96 samples on 2 ranks, 8 per step: 6 steps per epoch).
model=(--model resnet18 -b 8 --train-limit 96 --test-limit 32 --sync-bn)
run "$work/bn_ref" > "$work/bn_ref.out" 2>&1 || fail "--sync-bn run failed: $(cat "$work/bn_ref.out")"
run "$work/bn_stop" --stop-after-steps 7 > /dev/null 2>&1 || fail "--sync-bn stop failed"
run "$work/bn_stop" --resume auto > "$work/bn_stop.out" 2>&1 || fail "--sync-bn resume failed: $(cat "$work/bn_stop.out")"
grep -q "continuing at epoch 1, step 1 with" "$work/bn_stop.out" || fail "did not resume at epoch 1 step 1: $(cat "$work/bn_stop.out")"
same "$work/bn_ref/checkpoint.pth" "$work/bn_stop/checkpoint.pth" "all features with --sync-bn: stopped and resumed, not bit-identical"

line=$(/usr/bin/python3 "$here/torchvision_features.py" load "$work/ref/checkpoint.pth") ||
  fail "Python's train.py objects do not load ddptrain's checkpoint"
echo "Python: $line"
echo "$line" | grep -q "resumed at epoch 2, scale 65536, n_averaged 3" || fail "Python read another state: $line"

model=(--model mnist_cnn -b 16 --train-limit 192 --test-limit 64)
mkdir -p "$work/py"
/usr/bin/python3 "$here/torchvision_features.py" save "$work/py/from_python.pth"
run "$work/py" --resume "$work/py/from_python.pth" > "$work/py.out" 2>&1 || fail "resuming Python's checkpoint failed: $(cat "$work/py.out")"
grep -q "continuing at epoch 1" "$work/py.out" || fail "did not continue at epoch 1: $(cat "$work/py.out")"
# 6 good steps after Python's 3 (growth interval 2000): tracker 9 at scale 512; 3 EMA updates after Python's 5.
/usr/bin/python3 -c "
import sys, torch
c = torch.load(sys.argv[1])
s, n = c['scaler'], c['model_ema']['n_averaged'].item()
assert (s['scale'], s['_growth_tracker'], n) == (512.0, 9, 8), (s, n)
" "$work/py/checkpoint.pth" || fail "the scaler or the average did not continue from Python's"
echo "PASSED: features train, resume exactly mid-epoch and move between Python and ddptrain both ways"
