#!/usr/bin/env bash
# The training throughput benchmark runs end to end (--quick: a few hundred images, 2 epochs) and ends with one JSON
# line per model and impl; on mnist_cnn and mlp ddprun and per-param train the same weights, so their accuracies
# agree exactly.
# Usage: train_throughput_smoke.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/../e2e/common.sh"
BUILD_DIR=$1 "$(dirname "$0")/../../scripts/bench/train_throughput.sh" --quick > "$work/out"
cat "$work/out"
for model in mnist_cnn mlp resnet18; do
  for impl in ddprun per-param pytorch-ddp compute-limit compute-concurrent compute-lockstep ceiling; do
    grep -qE "^\{\"impl\": \"$impl\", \"model\": \"$model\", \"ranks\": 2, \"images_per_sec\": [0-9.]+, \"test_acc1\": ([0-9.]+|null)\}$" \
      "$work/out" || fail "no JSON line for $impl on $model"
  done
  acc() { sed -n "s/^{\"impl\": \"$1\", \"model\": \"$model\", .*\"test_acc1\": \([0-9.]*\)}$/\1/p" "$work/out"; }
  ips() { sed -n "s/^{\"impl\": \"$1\", \"model\": \"$model\", .*\"images_per_sec\": \([0-9.]*\),.*/\1/p" "$work/out"; }
  # The ceiling is the compute-lockstep step (64 images per rank) plus the all-reduce of the model's gradients.
  allreduce_ms=$(sed -n "s/^run 1  $model all-reduce of the gradients ([0-9]* bytes), both ranks ready: \([0-9.]*\) ms$/\1/p" "$work/out")
  [ -n "$allreduce_ms" ] || fail "no all-reduce time of the gradients for $model"
  awk -v c="$(ips compute-lockstep)" -v t="$allreduce_ms" -v x="$(ips ceiling)" \
    'BEGIN { e = 128 / (128 / c + t / 1e3); exit !(t > 0 && x < c && (x - e) ^ 2 < (0.001 * e) ^ 2) }' ||
    fail "$model: ceiling $(ips ceiling) is not compute-lockstep $(ips compute-lockstep) with a $allreduce_ms ms all-reduce"
  grep -qE "^run 1  $model two at once, each process: [0-9.]+ and [0-9.]+ images/s; in lockstep, waiting for the other per step in the last epoch: [0-9.]+ and [0-9.]+ ms$" \
    "$work/out" || fail "no per-process figures of the compute-only runs for $model"
  # (resnet18's BatchNorm statistics: DDP sends rank 0's before each forward, per-param only at the start)
  [ "$model" = resnet18 ] || [ "$(acc ddprun)" = "$(acc per-param)" ] || fail "$model: ddprun and per-param accuracies differ: $(acc ddprun) vs $(acc per-param)"
  grep -q "^$model  *ddprun / compute-limit  *median" "$work/out" || fail "no ratio to the compute limit for $model"
  # Paired within the repeat whichever ran first (in repeat 1 ddprun runs first, in repeat 2 per-param).
  grep -qE "^$model  *ddprun / per-param  *median [0-9.]+ \(range [0-9.]+-[0-9.]+; per repeat [0-9.]+\)" "$work/out" ||
    fail "no per-repeat ratio to per-param for $model"
  # The step breakdown from a --timeline run, beside the compute-only step.
  grep -qE "^$model  *ddptrain step [0-9.]+ ms over [0-9]+ steps = batch [0-9.]+ \\+ forward [0-9.]+ \\+ backward [0-9.]+ \\+ step check [0-9.]+ \\+ optimizer step [0-9.]+ \\+ other -?[0-9.]+; compute only: [0-9.]+ ms alone, [0-9.]+ ms two at once, [0-9.]+ ms in lockstep; \\+ all-reduce [0-9.]+ ms = ceiling [0-9.]+ ms$" \
    "$work/out" || fail "no step breakdown for $model"
  grep -qE "^$model  *rank 1:  step [0-9.]+ ms over [0-9]+ steps = batch " "$work/out" || fail "no step breakdown of rank 1 for $model"
done
echo PASSED
