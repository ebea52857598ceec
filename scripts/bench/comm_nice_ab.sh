#!/usr/bin/env bash
# The communication thread's nice value, A/B: ddptrain's training images/s (2 ranks x 1 intra-op thread, batch 64 per
# rank, Fashion-MNIST) with DDPRUN_COMM_NICE=0 (the default) and DDPRUN_COMM_NICE=19, run in pairs in alternating
# order; a run's figure is the median of its epochs after the first. Prints each run, each pair's ratio
# (nice 19 / nice 0) and their median and range, per model.
#   scripts/bench/comm_nice_ab.sh [--pairs P] [--models "mnist_cnn mlp resnet18"]
# Builds ddptrain into ./build (or $BUILD_DIR) if needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
pairs=6 models="mnist_cnn mlp resnet18"
declare -A samples=([mnist_cnn]=12000 [mlp]=4000 [resnet18]=2048)
while [ $# -gt 0 ]; do
  case $1 in
    --pairs) pairs=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    *) echo "comm_nice_ab.sh: unknown argument $1 (use --pairs P, --models LIST)" >&2; exit 2 ;;
  esac
done
for model in $models; do
  [ -n "${samples[$model]:-}" ] || { echo "comm_nice_ab.sh: no model '$model' (mnist_cnn, mlp, resnet18)" >&2; exit 2; }
done
. scripts/bench/ddptrain_runs.sh

echo "# machine: $(getconf _NPROCESSORS_ONLN) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), 2 ranks x 1 thread, $pairs pairs"
for model in $models; do
  : > "$tmp/ratios"
  for ((p = 1; p <= pairs; p++)); do
    order="0 19"
    [ $((p % 2)) -eq 0 ] && order="19 0"
    declare -A ips=()
    for nice in $order; do
      rm -rf "$tmp/out"
      DDPRUN_COMM_NICE=$nice "${mpirun[@]}" "$build/bin/ddptrain" --model "$model" -b 64 --epochs 3 \
        --train-limit "${samples[$model]}" --test-limit 2000 --threads 1 --output-dir "$tmp/out" > /dev/null
      ips[$nice]=$(sed -n 's/.*"images_per_sec": \([0-9.e+]*\).*/\1/p' "$tmp/out/metrics.jsonl" | median_after_first)
      [ -n "${ips[$nice]}" ] || { echo "comm_nice_ab.sh: $model at nice $nice printed no images/s" >&2; exit 1; }
    done
    ratio=$(awk -v a="${ips[19]}" -v b="${ips[0]}" 'BEGIN { printf "%.3f", a / b }')
    echo "$ratio" >> "$tmp/ratios"
    printf 'pair %d  %-9s nice 0 %8.1f  nice 19 %8.1f  images/s  ratio %s\n' "$p" "$model" "${ips[0]}" "${ips[19]}" "$ratio"
  done
  awk '{ print "r", $1 }' "$tmp/ratios" | awk -f scripts/bench/summarize.awk |
    { read -r _ med lo hi n; printf '%-9s nice 19 / nice 0: median %.3f (range %.3f-%.3f, %d pairs; per pair %s)\n' \
      "$model" "$med" "$lo" "$hi" "$n" "$(tr '\n' ' ' < "$tmp/ratios")"; }
done
