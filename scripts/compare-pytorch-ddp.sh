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
  ips=$(awk -F'"images_per_sec": ' '{split($2, a, ","); print a[1]}' "$out/metrics.jsonl" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
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
# One summary row per implementation (median and range over the seeds), then the same as JSON lines.
summary() {
  awk -v impl="$1" -v json="$2" -v epochs="$epochs" '
    function sort(x, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t } }
    function median(x, n) { return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2 }
    $1 == impl { n++; a[n] = $3; s[n] = $4 }
    END {
      sort(a, n); sort(s, n)
      if (json) printf "{\"impl\": \"%s\", \"ranks\": 2, \"epochs\": %d, \"runs\": %d, \"test_acc1_median\": %.2f, \"images_per_sec_median\": %.1f}\n", impl, epochs, n, median(a, n), median(s, n)
      else printf "%-12s test_acc1 median %.2f%% (range %.2f-%.2f)  images/s median %.1f (range %.1f-%.1f)  runs %d\n", impl, median(a, n), a[1], a[n], median(s, n), s[1], s[n], n
    }' "$results"
}
for json in 0 1; do summary ddprun $json; summary pytorch_ddp $json; done
ips_ratio=$(awk '$1 == "ddprun" { d[++n] = $4 } $1 == "pytorch_ddp" { p[++m] = $4 } END { for (i = 1; i <= n; i++) r[i] = d[i] / p[i]; for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }; printf "%.2f", n % 2 ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2 }' "$results")
echo "images/s ddprun / pytorch_ddp, median of per-seed ratios: $ips_ratio"
rm -f "$results"
