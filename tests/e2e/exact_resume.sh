#!/usr/bin/env bash
# Exact resume on 2 ranks (mnist_cnn, with dropout): a run stopped after N steps (--stop-after-steps: a mid-epoch
# checkpoint with every rank's random state, or the end of an epoch) and continued with --resume auto ends with the
# same weights, optimizer state and schedule, bit for bit, as a run that was never stopped; at the first step of an
# epoch, in the middle, at its last step, with --async-save, and with --save-every-steps on. A 3-rank resume of a
# 2-rank mid-epoch checkpoint says what it re-derives and trains to the end.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
here=$(dirname "$0")
common=(--model mnist_cnn -b 32 --train-limit 256 --test-limit 64 --threads 1 --epochs 2 --lr-step-size 1)
run() {  # run RANKS FOLDER FLAGS...
  local ranks=$1 dir=$2
  shift 2
  mpirun --oversubscribe -np "$ranks" "$bin/ddptrain" "${common[@]}" --output-dir "$dir" "$@"
}
same() { /usr/bin/python3 "$here/same_state.py" "$1" "$2" || fail "$3"; }

# 256 samples on 2 ranks, 32 per step: 4 steps per epoch, 8 in all.
run 2 "$work/ref" > /dev/null
run 2 "$work/every" --save-every-steps 1 > /dev/null
same "$work/ref/checkpoint.pth" "$work/every/checkpoint.pth" "--save-every-steps changed the training"

for stop in 1 2 4 5; do  # after the first step, mid-epoch, the epoch's last step, the first step of epoch 1
  dir="$work/stop$stop"
  run 2 "$dir" --stop-after-steps "$stop" > "$dir.out1" 2>&1 || fail "the run stopping after $stop steps failed: $(cat "$dir.out1")"
  grep -q "stopped after $stop steps" "$dir.out1" || fail "no stop message after $stop steps: $(cat "$dir.out1")"
  run 2 "$dir" --resume auto > "$dir.out2" 2>&1 || fail "the resume after $stop steps failed: $(cat "$dir.out2")"
  case $stop in
    4) grep -q "continuing at epoch 1 with" "$dir.out2" || fail "stop 4 did not resume at epoch 1: $(cat "$dir.out2")" ;;
    *) step=$((stop % 4)) epoch=$((stop / 4))
       grep -q "continuing at epoch $epoch, step $step with" "$dir.out2" ||
         fail "stop $stop did not resume at epoch $epoch step $step: $(cat "$dir.out2")" ;;
  esac
  same "$work/ref/checkpoint.pth" "$dir/checkpoint.pth" "stopped after $stop steps and resumed: not bit-identical"
done

run 2 "$work/async" --async-save --stop-after-steps 3 > /dev/null
run 2 "$work/async" --async-save --resume auto > /dev/null
same "$work/ref/checkpoint.pth" "$work/async/checkpoint.pth" "--async-save: stopped and resumed, not bit-identical"

# Another world size: re-derived, reported, trained to the end.
run 2 "$work/grow" --stop-after-steps 2 > /dev/null
run 3 "$work/grow" --resume auto > "$work/grow.out" 2>&1 || fail "the 3-rank resume failed: $(cat "$work/grow.out")"
grep -q "written by 2 rank(s) with batch size 32, this run has 3 with 32: the data order and the random streams are re-derived" "$work/grow.out" ||
  fail "no report of the world-size change: $(cat "$work/grow.out")"
grep -q "^epoch 1/1" "$work/grow.out" || fail "the 3-rank resume did not train to the end"
echo "PASSED: stopped after 1, 2, 4, 5 steps (and with --async-save) and resumed: bit-identical to the uninterrupted run; a 3-rank resume re-derives and finishes"
