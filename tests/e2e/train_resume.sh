#!/usr/bin/env bash
# End to end: 2 ranks train 2 epochs on a subset and checkpoint; a second run (through ddprun) resumes from
# checkpoint.pth and trains the third epoch with the restored learning rate; a third run resumes that on 3 ranks;
# Python opens the results.
set -euo pipefail
bin=$1
src=$2
. "$(dirname "$0")/common.sh"
common=(--model mnist_cnn -b 32 --lr 0.05 --lr-step-size 1 --lr-gamma 0.5 --train-limit 1200 --test-limit 400
        --threads 1)

mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --output-dir "$work" --epochs 2 | tee "$work/run1.log"
for f in checkpoint.pth model_0.pth model_1.pth metrics.jsonl; do [ -s "$work/$f" ] || fail "missing $work/$f"; done
[ "$(wc -l < "$work/metrics.jsonl")" -eq 2 ] || fail "metrics.jsonl should have 2 lines"
grep -q '"epoch": 0, .*"lr": 0.05,' "$work/metrics.jsonl" || fail "epoch 0 should train with lr 0.05"
grep -q '"epoch": 1, .*"lr": 0.025,' "$work/metrics.jsonl" || fail "epoch 1 should train with lr 0.025"
cmp -s "$work/checkpoint.pth" "$work/model_1.pth" || fail "checkpoint.pth is not the newest epoch's file"
ls "$work" | grep -q '\.tmp' && fail "a temporary file was left behind"

"$bin/ddprun" --np 2 -- ddptrain "${common[@]}" --output-dir "$work" --epochs 3 --resume "$work/checkpoint.pth" | tee "$work/run2.log"
grep -q "continuing at epoch 2 with lr 0.0125" "$work/run2.log" || fail "the resumed run did not continue at epoch 2"
grep -q "^epoch 0/" "$work/run2.log" && fail "the resumed run trained epoch 0 again"
[ "$(wc -l < "$work/metrics.jsonl")" -eq 3 ] || fail "metrics.jsonl should have 3 lines after the resume"
grep -q '"epoch": 2, .*"lr": 0.0125,' "$work/metrics.jsonl" || fail "epoch 2 should train with lr 0.0125"
acc=$(sed -n 's/.*"epoch": 2, .*"test_acc1": \([0-9.]*\).*/\1/p' "$work/metrics.jsonl")
awk -v a="$acc" 'BEGIN { exit !(a > 50) }' || fail "test accuracy after 3 epochs is $acc%, expected above 50%"

# The resumed epoch is the epoch an uninterrupted run trains: same loss and accuracy to the last printed digit
# (weights, momentum, learning rate, data order and dropout draws all continue where they stopped).
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --epochs 3 --output-dir "$work/straight" > "$work/straight.log"
# The same but for timings and the "resumed" mark, which only the resumed run's line has.
resumed=$(grep '"epoch": 2,' "$work/metrics.jsonl" | sed 's/"images_per_sec.*"world_size"//')
straight=$(grep '"epoch": 2,' "$work/straight/metrics.jsonl" | sed 's/"images_per_sec.*"world_size"//')
[ "${resumed/\"resumed\": true/}" = "${straight/\"resumed\": false/}" ] ||
  fail "resumed epoch 2 differs from an uninterrupted run: $resumed vs $straight"
[[ "$resumed" == *'"resumed": true}' ]] || fail "the resumed run's first epoch is not marked resumed: $resumed"
cmp -s <(/usr/bin/python3 -c "import torch,sys; print(torch.load(sys.argv[1])['model']['fc2.weight'].sum().item())" "$work/model_2.pth") \
       <(/usr/bin/python3 -c "import torch,sys; print(torch.load(sys.argv[1])['model']['fc2.weight'].sum().item())" "$work/straight/model_2.pth") ||
  fail "weights after the resumed epoch differ from an uninterrupted run"

# Resume anywhere: the 2-rank checkpoint continues on 3 ranks (an uneven split: the sampler pads).
mpirun --oversubscribe -np 3 "$bin/ddptrain" "${common[@]}" --output-dir "$work" --epochs 4 --resume "$work/checkpoint.pth" | tee "$work/run3.log"
grep -q "ddptrain: 3 rank(s)" "$work/run3.log" || fail "the third run did not start 3 ranks"
grep -q "continuing at epoch 3 with lr 0.00625" "$work/run3.log" || fail "the 3-rank run did not continue at epoch 3"
grep -q '"epoch": 3, .*"world_size": 3' "$work/metrics.jsonl" || fail "epoch 3 should be recorded with world_size 3"

/usr/bin/python3 "$src/tests/e2e/check_checkpoint.py" "$work/model_2.pth" 2 0.00625
/usr/bin/python3 "$src/tests/e2e/check_checkpoint.py" "$work/checkpoint.pth" 3 0.003125
/usr/bin/python3 "$src/tests/e2e/check_checkpoint.py" "$work/model_0.pth" 0 0.025
echo "PASSED: train, checkpoint, resume at epoch 2 (test_acc1 $acc%), resume on 3 ranks, Python loads the files"
