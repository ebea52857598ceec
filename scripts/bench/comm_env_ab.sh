#!/usr/bin/env bash
# A DDPRUN_COMM_* setting, A/B: ddptrain's training images/s (2 ranks x 1 intra-op thread, batch 64 per rank,
# Fashion-MNIST) with VARIABLE=A and VARIABLE=B, run in pairs in alternating order; a run's figure is the median of its
# epochs after the first. Prints each run, each pair's ratio (B / A) and their median and range, per model.
#   scripts/bench/comm_env_ab.sh [--variable DDPRUN_COMM_NICE] [--a 0] [--b 19] [--pairs P] [--models "mnist_cnn mlp resnet18"]
# e.g. --variable DDPRUN_COMM_WAIT_SLEEP --a 0 --b 1. Builds ddptrain into ./build (or $BUILD_DIR) if needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
pairs=6 models="mnist_cnn mlp resnet18" variable=DDPRUN_COMM_NICE a=0 b=19
declare -A samples=([mnist_cnn]=12000 [mlp]=4000 [resnet18]=2048)
while [ $# -gt 0 ]; do
  case $1 in
    --pairs) pairs=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --variable) variable=$2; shift 2 ;;
    --a) a=$2; shift 2 ;;
    --b) b=$2; shift 2 ;;
    *) echo "comm_env_ab.sh: unknown argument $1 (use --variable V, --a X, --b Y, --pairs P, --models LIST)" >&2; exit 2 ;;
  esac
done
[[ $variable =~ ^DDPRUN_COMM_[A-Z_]+$ ]] || { echo "comm_env_ab.sh: --variable '$variable' is not a DDPRUN_COMM_* name" >&2; exit 2; }
[ "$a" != "$b" ] || { echo "comm_env_ab.sh: --a and --b are both '$a'" >&2; exit 2; }
for model in $models; do
  [ -n "${samples[$model]:-}" ] || { echo "comm_env_ab.sh: no model '$model' (mnist_cnn, mlp, resnet18)" >&2; exit 2; }
done
. scripts/bench/ddptrain_runs.sh

echo "# machine: $(getconf _NPROCESSORS_ONLN) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), 2 ranks x 1 thread, $pairs pairs, $variable=$a vs $b"
for model in $models; do
  : > "$tmp/ratios"
  for ((p = 1; p <= pairs; p++)); do
    order="a b"
    [ $((p % 2)) -eq 0 ] && order="b a"
    declare -A ips=()
    for side in $order; do
      value=$a; [ "$side" = b ] && value=$b
      rm -rf "$tmp/out"
      env "$variable=$value" "${mpirun[@]}" "$build/bin/ddptrain" --model "$model" -b 64 --epochs 3 \
        --train-limit "${samples[$model]}" --test-limit 2000 --threads 1 --output-dir "$tmp/out" > /dev/null
      ips[$side]=$(sed -n 's/.*"images_per_sec": \([0-9.e+]*\).*/\1/p' "$tmp/out/metrics.jsonl" | median_after_first)
      [ -n "${ips[$side]}" ] || { echo "comm_env_ab.sh: $model with $variable=$value printed no images/s" >&2; exit 1; }
    done
    ratio=$(awk -v x="${ips[b]}" -v y="${ips[a]}" 'BEGIN { printf "%.3f", x / y }')
    echo "$ratio" >> "$tmp/ratios"
    printf 'pair %d  %-9s %s=%s %8.1f  =%s %8.1f  images/s  ratio %s\n' "$p" "$model" "$variable" "$a" "${ips[a]}" "$b" "${ips[b]}" "$ratio"
  done
  awk '{ print "r", $1 }' "$tmp/ratios" | awk -f scripts/bench/summarize.awk |
    { read -r _ med lo hi n; printf '%-9s %s=%s / %s: median %.3f (range %.3f-%.3f, %d pairs; per pair %s)\n' \
      "$model" "$variable" "$b" "$a" "$med" "$lo" "$hi" "$n" "$(tr '\n' ' ' < "$tmp/ratios")"; }
done
