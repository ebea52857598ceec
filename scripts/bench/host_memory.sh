#!/usr/bin/env bash
# ddptrain's training throughput with glibc's default malloc (DDPRUN_HOST_MEMORY=default) against ddptrain's own
# setting (freed memory kept for reuse), 1 rank x 1 thread, mnist_cnn, measured alternately; prints each run, the
# medians and ranges, the ratio, and one JSON line. Assumes scripts/build.sh ran.
#   scripts/bench/host_memory.sh [REPEATS]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=${1:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DDPRUN_PROGRESS=0
results=$(mktemp)
for rep in $(seq "$repeats"); do
  for mode in default keep; do
    out=$(mktemp -d)
    DDPRUN_HOST_MEMORY=$mode mpirun -np 1 build/bin/ddptrain --epochs 1 --train-limit 3000 --test-limit 100 \
      --threads 1 --output-dir "$out" > /dev/null
    ips=$(sed 's/.*"images_per_sec": \([0-9.]*\).*/\1/' "$out/metrics.jsonl")
    rm -rf "$out"
    echo "run $rep  $mode  images/s $ips"
    echo "$mode $ips" >> "$results"
  done
done
read -r _ d d_lo d_hi _ <<< "$(grep '^default ' "$results" | awk -f scripts/bench/summarize.awk)"
read -r _ k k_lo k_hi _ <<< "$(grep '^keep ' "$results" | awk -f scripts/bench/summarize.awk)"
ratio=$(awk -v k="$k" -v d="$d" 'BEGIN { printf "%.2f", k / d }')
printf 'glibc defaults      images/s median %.1f (range %.1f-%.1f)\n' "$d" "$d_lo" "$d_hi"
printf 'freed memory kept   images/s median %.1f (range %.1f-%.1f)\n' "$k" "$k_lo" "$k_hi"
echo "ratio kept/default: $ratio"
printf '{"bench": "host_memory", "model": "mnist_cnn", "ranks": 1, "threads": 1, "default_images_per_sec": %.1f, "kept_images_per_sec": %.1f, "ratio": %s}\n' \
  "$d" "$k" "$ratio"
rm -f "$results"
