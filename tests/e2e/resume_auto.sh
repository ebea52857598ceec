#!/usr/bin/env bash
# --keep-last and --resume auto on 2 ranks: --keep-last 2 leaves the two newest model_<epoch>.pth; --resume auto skips
# a truncated checkpoint.pth and a garbage model_2.pth with a warning naming each, and continues from model_1.pth;
# in an empty folder it starts afresh; with nothing loadable it stops with one line.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
common=(--model mnist_cnn -b 32 --train-limit 256 --test-limit 64 --threads 1)
run() {  # run FOLDER FLAGS...
  local dir=$1
  shift
  mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --output-dir "$dir" "$@"
}

run "$work/run" --epochs 3 --keep-last 2 > /dev/null
[ "$(cd "$work/run" && ls model_*.pth | tr '\n' ' ')" = "model_1.pth model_2.pth " ] ||
  fail "--keep-last 2 left: $(ls "$work/run")"

head -c 1000 "$work/run/checkpoint.pth" > "$work/short" && mv "$work/short" "$work/run/checkpoint.pth"
echo "not a checkpoint" > "$work/run/model_2.pth"
run "$work/run" --epochs 4 --resume auto > "$work/out" 2> "$work/err"
grep -q "warning: --resume auto: skipping a newer file: .*checkpoint.pth" "$work/err" || fail "no warning for checkpoint.pth: $(cat "$work/err")"
grep -q "warning: --resume auto: skipping a newer file: .*model_2.pth.*not a PyTorch checkpoint" "$work/err" ||
  fail "no warning for model_2.pth: $(cat "$work/err")"
grep -q "resumed from $work/run/model_1.pth: continuing at epoch 2" "$work/out" || fail "did not resume from model_1.pth"
grep -q "^epoch 3/3" "$work/out" || fail "the resumed run did not train to the end"

run "$work/empty" --epochs 1 --resume auto > "$work/out2"
grep -q "no checkpoint in '$work/empty' yet; starting afresh" "$work/out2" || fail "an empty folder did not start afresh"
grep -q "^epoch 0/0" "$work/out2" || fail "the fresh run did not train"

for f in "$work"/run/*.pth; do echo garbage > "$f"; done
set +e
run "$work/run" --epochs 5 --resume auto > /dev/null 2> "$work/err3"
code=$?
set -e
[ "$code" -eq 3 ] || fail "exit code $code with nothing loadable, expected 3 (failed before training)"
grep -q "none of the 4 checkpoints in --output-dir '$work/run' can be loaded" "$work/err3" ||
  fail "no clear error: $(cat "$work/err3")"
echo "PASSED: --keep-last 2, --resume auto skips broken files, starts afresh in an empty folder, stops when none loads"
