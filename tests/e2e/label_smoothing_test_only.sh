#!/usr/bin/env bash
# torchvision's --label-smoothing, top-5 accuracy and --test-only in ddptrain: a run with label smoothing reports
# test_acc1 and test_acc5 (>= test_acc1) per epoch and saves label_smoothing in the checkpoint's "args";
# --test-only --resume auto scores that checkpoint as the run did, trains nothing and writes no checkpoint; in a folder
# without a checkpoint it stops with one line (exit 2) instead of scoring an untrained model.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
small=(--model mnist_cnn --train-limit 512 --test-limit 256 --threads 1 -b 64)

mpirun -np 2 "$bin/ddptrain" "${small[@]}" --epochs 1 --label-smoothing 0.1 --output-dir "$work/run" > "$work/run.out"
read -r acc1 acc5 < <(/usr/bin/python3 - "$work/run" <<'PY'
import json, sys, torch
m = json.loads(open(sys.argv[1] + "/metrics.jsonl").read().splitlines()[-1])
assert 0 < m["test_acc1"] <= m["test_acc5"] <= 100, m
assert torch.load(sys.argv[1] + "/checkpoint.pth")["args"]["label_smoothing"] == 0.1
print("%.2f %.2f" % (m["test_acc1"], m["test_acc5"]))
PY
) || fail "metrics or checkpoint args wrong"
grep -q "test_acc1 $acc1%  test_acc5 $acc5%" "$work/run.out" || fail "the epoch line does not show both accuracies"
echo "trained with --label-smoothing 0.1: test_acc1 $acc1%, test_acc5 $acc5%"

before=$(stat -c %Y "$work/run/checkpoint.pth")
mpirun -np 2 "$bin/ddptrain" "${small[@]}" --epochs 1 --test-only --resume auto --output-dir "$work/run" \
  > "$work/test_only.out"
cat "$work/test_only.out"
grep -q "^ddptrain: --test-only: the end of epoch 0: test_acc1 $acc1%  test_acc5 $acc5%$" "$work/test_only.out" ||
  fail "--test-only did not score the checkpoint as the run did ($acc1%, $acc5%)"
[ "$(stat -c %Y "$work/run/checkpoint.pth")" = "$before" ] || fail "--test-only rewrote the checkpoint"
[ "$(wc -l < "$work/run/metrics.jsonl")" -eq 1 ] || fail "--test-only appended to metrics.jsonl"

code=0
mpirun -np 2 "$bin/ddptrain" "${small[@]}" --test-only --resume auto --output-dir "$work/empty" \
  > /dev/null 2> "$work/empty.err" || code=$?
[ "$code" -eq 2 ] || fail "--test-only without a checkpoint: exit $code, expected 2"
grep -q "^ddptrain: error: --test-only: --resume auto found no checkpoint in '$work/empty' to evaluate$" "$work/empty.err" ||
  fail "no clear line: $(cat "$work/empty.err")"
echo "--test-only: same accuracies, nothing written; without a checkpoint: exit 2 with one line"
