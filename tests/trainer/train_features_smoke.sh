#!/usr/bin/env bash
# The features benchmark runs end to end (--quick: a few batches, 2 epochs): one JSON line per row, and the paired
# ratios (ddprun against Python with the same features, each feature's cost). Usage: train_features_smoke.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/../e2e/common.sh"
BUILD_DIR=$1 "$(dirname "$0")/../../scripts/bench/train_features.sh" --quick > "$work/out"
cat "$work/out"
for row in "ddprun mnist_cnn none" "pytorch-ddp mnist_cnn none" "ddprun mnist_cnn amp" "pytorch-ddp mnist_cnn amp" \
           "ddprun resnet18 none" "pytorch-ddp resnet18 none" "ddprun resnet18 sync-bn"; do
  set -- $row
  grep -qE "^\{\"impl\": \"$1\", \"model\": \"$2\", \"features\": \"$3\", \"ranks\": 2, \"images_per_sec\": [0-9.]+\}$" \
    "$work/out" || fail "no JSON line for $row"
done
for ratio in "mnist_cnn ddprun / pytorch-ddp, both --amp" "mnist_cnn --amp cost, ddprun: with / without" \
             "resnet18 --sync-bn cost, ddprun: with / without"; do
  model=${ratio%% *} name=${ratio#* }
  grep -qE "^$model +$(sed 's/[/.,]/\\&/g' <<< "$name") +median [0-9.]+ \(range [0-9.]+-[0-9.]+; per repeat [0-9.]+\)$" \
    "$work/out" || fail "no ratio '$name' for $model"
done
echo PASSED
