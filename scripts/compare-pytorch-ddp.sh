#!/usr/bin/env bash
# Side by side: ddptrain (mpirun, 2 ranks) and PyTorch's own DDP (Python, gloo, 2 ranks) on the same settings,
# for several seeds; prints each run, then the medians and spreads of test accuracy and images/s, and one JSON line.
#   scripts/compare-pytorch-ddp.sh [--seeds "1 2 3"] [--epochs 2] [--train-limit 12000] [--test-limit 2000]
# Assumes scripts/build.sh ran.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="1 2 3"; epochs=2; train_limit=12000; test_limit=2000
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --train-limit) train_limit=$2; shift 2 ;;
    --test-limit) test_limit=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
common=(--epochs "$epochs" -b 64 --lr 0.05 --train-limit "$train_limit" --test-limit "$test_limit")
results=$(mktemp)
for seed in $seeds; do
  out=$(mktemp -d)
  mpirun --oversubscribe -np 2 build/bin/ddptrain --model mnist_cnn "${common[@]}" --seed "$seed" --threads 1 \
    --output-dir "$out" > /dev/null
  last=$(tail -n 1 "$out/metrics.jsonl")
  acc=$(sed 's/.*"test_acc1": \([0-9.]*\).*/\1/' <<< "$last")
  ips=$(awk -F'"images_per_sec": ' '{ split($2, a, ","); print "epoch", a[1] }' "$out/metrics.jsonl" |
    awk -f scripts/bench/summarize.awk | cut -d' ' -f2)  # median over the epochs, as the Python reference reports
  echo "ddptrain     seed $seed: test_acc1 $acc%  images/s $ips"
  echo "ddprun $seed $acc $ips" >> "$results"
  rm -rf "$out"
  line=$(/usr/bin/python3 scripts/reference/pytorch_ddp_mnist.py --ranks 2 "${common[@]}" --seed "$seed" | tail -n 1)
  acc=$(sed 's/.*"test_acc1": \([0-9.]*\).*/\1/' <<< "$line")
  ips=$(sed 's/.*"images_per_sec": \([0-9.]*\).*/\1/' <<< "$line")
  printf 'pytorch_ddp  seed %s: test_acc1 %s%%  images/s %.1f\n' "$seed" "$acc" "$ips"
  echo "pytorch_ddp $seed $acc $ips" >> "$results"
done
echo
# Medians and ranges over the seeds (scripts/bench/summarize.awk), then the same as JSON lines.
stats=$(awk '{ print $1 "_acc", $3; print $1 "_ips", $4 }' "$results" | awk -f scripts/bench/summarize.awk)
ratios=$(awk '$1 == "ddprun" { d[$2] = $4 } $1 == "pytorch_ddp" { print "ratio", d[$2] / $4 }' "$results" |
  awk -f scripts/bench/summarize.awk)
for impl in ddprun pytorch_ddp; do
  read -r _ acc acc_lo acc_hi runs <<< "$(grep "^${impl}_acc " <<< "$stats")"
  read -r _ ips ips_lo ips_hi _ <<< "$(grep "^${impl}_ips " <<< "$stats")"
  printf '%-12s test_acc1 median %.2f%% (range %.2f-%.2f)  images/s median %.1f (range %.1f-%.1f)  runs %d\n' \
    "$impl" "$acc" "$acc_lo" "$acc_hi" "$ips" "$ips_lo" "$ips_hi" "$runs"
  json+=$(printf '{"impl": "%s", "ranks": 2, "epochs": %d, "runs": %d, "test_acc1_median": %.2f, "images_per_sec_median": %.1f}\\n' \
    "$impl" "$epochs" "$runs" "$acc" "$ips")
done
read -r _ ratio ratio_lo ratio_hi _ <<< "$ratios"
printf 'images/s ddprun / pytorch_ddp, per seed: median %.2f (range %.2f-%.2f)\n' "$ratio" "$ratio_lo" "$ratio_hi"
printf '%b' "$json"
rm -f "$results"
