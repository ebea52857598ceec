#!/usr/bin/env bash
# The main job: installs, builds, trains mnist_cnn on Fashion-MNIST with 2 ranks for 2 epochs (rank 0 saves a
# checkpoint after each), then resumes from the checkpoint for a third epoch, and draws the metrics (metrics.png).
#   scripts/demo.sh [OUTPUT_DIR]     (default: out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/demo}
scripts/install-deps.sh
scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Start from scratch: remove only what an earlier demo wrote there.
rm -f "$out"/checkpoint.pth "$out"/model_*.pth "$out"/metrics.jsonl "$out"/metrics.png
args=(--model mnist_cnn -b 64 --lr 0.05 --train-limit 12000 --test-limit 2000 --output-dir "$out")
echo "== training 2 epochs on 2 ranks"
build/bin/ddprun --np 2 -- ddptrain "${args[@]}" --epochs 2
echo "== resuming from $out/checkpoint.pth for epoch 2"
build/bin/ddprun --np 2 -- ddptrain "${args[@]}" --epochs 3 --resume "$out/checkpoint.pth"
echo "== $out:"
ls -l "$out"
cat "$out/metrics.jsonl"
/usr/bin/python3 scripts/plot_metrics.py "$out" -o "$out/metrics.png"
