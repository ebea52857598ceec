#!/usr/bin/env bash
# Numbers read from a checkpoint are checked against what they mean, and a diverged run's weights are refused: each
# mutation of a real mid-epoch checkpoint (made by Python's torch.load/torch.save) stops ddptrain on 2 ranks with
# exit code 3 and one line naming the field. Before, epoch 2^31-1 gave "epoch -2147483648" and an endless run,
# epoch 2^32 silently epoch 1, position -640 extra steps, position 64*2^32+192 silently step 3, world_size 0 was
# accepted. With --resume auto, a newest file whose weights are NaN is skipped for the last good one.
set -uo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
py=/usr/bin/python3
data=(--train-limit 2000 --test-limit 200 --threads 1 -b 64)
small=(--epochs 2 "${data[@]}")

mpirun --quiet --oversubscribe -np 2 "$bin/ddptrain" "${small[@]}" --stop-after-steps 2 --output-dir "$work/base" \
  > "$work/base.log" 2>&1 || fail "the base run failed: $(cat "$work/base.log")"

mutate() {  # mutate NAME PYTHON-STATEMENT: $work/NAME.pth is the base checkpoint after the statement (on dict ck)
  $py - "$work/base/checkpoint.pth" "$work/$1.pth" "$2" <<'PY' || fail "cannot write $1"
import math, sys, torch
ck = torch.load(sys.argv[1])
exec(sys.argv[3])
torch.save(ck, sys.argv[2])
PY
}

check() {  # check NAME STATEMENT EXPECTED
  mutate "$1" "$2"
  mpirun --quiet --oversubscribe -np 2 "$bin/ddptrain" "${small[@]}" --output-dir "$work/out_$1" \
    --resume "$work/$1.pth" > "$work/$1.out" 2> "$work/$1.err"
  local rc=$?
  [ "$rc" -eq 3 ] || fail "$1: exit code $rc, expected 3: $(cat "$work/$1.err")"
  [ "$(wc -l < "$work/$1.err")" -eq 1 ] || fail "$1: stderr is not one line: $(cat "$work/$1.err")"
  grep -qF -- "ddptrain: error: --resume '$work/$1.pth': $3" "$work/$1.err" ||
    fail "$1: expected '$3', got: $(cat "$work/$1.err")"
  echo "$1: refused: $(cat "$work/$1.err")"
}

check epoch_max "ck['epoch'] = 2**31 - 1" "its 'epoch' (the last finished one) is 2147483647; it can be from -1 to 2147483645"
check epoch_2_32 "ck['epoch'] = 2**32" "its 'epoch' (the last finished one) is 4294967296; it can be from -1 to 2147483645"
check position_negative "ck['ddprun']['sampler']['position'] = -640" \
  "its sampler's position (samples each of its 2 ranks trained) is -640; it can be from 0 to 1000"
check position_huge "ck['ddprun']['sampler']['position'] = 64 * 2**32 + 192" \
  "its sampler's position (samples each of its 2 ranks trained) is 274877907136; it can be from 0 to 1000"
check position_step "ck['ddprun']['sampler']['position'] = 192" \
  "is inconsistent: its sampler's position 192 is not its step_in_epoch 2 times its batch_size 64"
check world_zero "ck['ddprun']['world_size'] = 0" "its world_size is 0; it can be from 1 to 1048576"
check lr_inf "ck['optimizer']['param_groups'][0]['lr'] = math.inf" "optimizer state's lr is inf; it can be from 0 to 1000"
check momentum_nan "ck['optimizer']['param_groups'][0]['momentum'] = math.nan" \
  "optimizer state's momentum is nan; it can be from 0 to 1"
check step_size_zero "ck['lr_scheduler']['step_size'] = 0" "lr_scheduler state's step_size is 0; it can be from 1 to"
check nan_weights "ck['model']['conv1.weight'][0, 0, 0, 0] = math.nan" \
  "its model entry 'conv1.weight' holds NaN or inf values: the run that saved it had diverged"
check nan_momentum "ck['optimizer']['state'][0]['momentum_buffer'][0] = math.inf" \
  "optimizer state: momentum_buffer of parameter 0 holds NaN or inf values"

# --resume auto: the newest file (checkpoint.pth) has NaN weights; model_0.pth, the end of epoch 0, is good.
mkdir -p "$work/auto"
mpirun --quiet --oversubscribe -np 2 "$bin/ddptrain" "${data[@]}" --epochs 1 --output-dir "$work/auto" \
  > "$work/auto0.log" 2>&1 || fail "the epoch-0 run failed: $(cat "$work/auto0.log")"
$py -c "
import math, torch
ck = torch.load('$work/auto/checkpoint.pth')
ck['model']['fc1.weight'][0, 0] = math.nan
torch.save(ck, '$work/auto/checkpoint.pth')" || fail "cannot poison checkpoint.pth"
mpirun --quiet --oversubscribe -np 2 "$bin/ddptrain" "${small[@]}" --output-dir "$work/auto" --resume auto \
  > "$work/auto.log" 2>&1 || fail "--resume auto did not fall back to model_0.pth: $(cat "$work/auto.log")"
grep -q "warning: --resume auto: skipping a newer file: --resume '$work/auto/checkpoint.pth': its model entry 'fc1.weight' holds NaN or inf values" "$work/auto.log" ||
  fail "no warning about the skipped file: $(cat "$work/auto.log")"
grep -q "resumed from $work/auto/model_0.pth: continuing at epoch 1" "$work/auto.log" ||
  fail "did not resume from model_0.pth: $(cat "$work/auto.log")"
echo "--resume auto: skipped checkpoint.pth (NaN weights), resumed from model_0.pth"
echo "PASSED: every out-of-range number and every diverged state in a checkpoint is refused with one line"
