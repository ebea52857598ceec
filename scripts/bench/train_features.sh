#!/usr/bin/env bash
# What torchvision's training features cost: training images/s of ddptrain, 2 ranks x 1 intra-op thread, batch 64
# per rank, with and without the feature, against PyTorch's Python DDP over gloo doing the same
# (scripts/reference/pytorch_ddp_mnist.py with /usr/bin/python3, glibc's malloc set as ddptrain sets it):
#   mnist_cnn   none    | --amp     (autocast to bfloat16 on CPU and a GradScaler; Python: torch.autocast("cpu") and
#                                    PyTorch 1.13's GradScaler made to run on CPU, scripts/reference/cpu_grad_scaler.py)
#   resnet18    none    | --sync-bn (Python 1.13's SyncBatchNorm refuses CPU tensors: no Python row for it)
# In each repeat every row runs once, ddprun and Python back to back; a run's images/s is the median over its epochs
# after the first. Prints each run, the medians and ranges over repeats, the ratios paired within each repeat
# (ddprun / Python for the same features, and each feature's cost: with / without, per implementation), and one
# JSON line per row: {"impl": "ddprun"|"pytorch-ddp", "model": m, "features": "none"|"amp"|"sync-bn", "ranks": 2,
# "images_per_sec": x}.
#   scripts/bench/train_features.sh [--repeats R] [--epochs E] [--quick]
# --quick: 1 repeat, 2 epochs, a few batches (a smoke run). Builds ddptrain into ./build (or $BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=3 epochs=3 scale=1
while [ $# -gt 0 ]; do
  case $1 in
    --repeats) repeats=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --quick) repeats=1 epochs=2 scale=8; shift ;;
    *) echo "train_features.sh: unknown argument $1 (use --repeats R, --epochs E, --quick)" >&2; exit 2 ;;
  esac
done
[ "$epochs" -ge 2 ] || { echo "train_features.sh: --epochs must be at least 2 (the first is not timed)" >&2; exit 2; }
python=/usr/bin/python3
"$python" -c 'import torch.distributed, torchvision' 2> /dev/null ||
  { echo "train_features.sh: $python lacks torch.distributed or torchvision (run scripts/install-deps.sh)" >&2; exit 1; }
. scripts/bench/ddptrain_runs.sh

# model features samples-per-epoch ddptrain-flag python-flag ("-": no Python row)
rows=("mnist_cnn none 4096 '' ''" "mnist_cnn amp 512 --amp --amp" "resnet18 none 1024 '' ''"
      "resnet18 sync-bn 1024 --sync-bn -")
echo "# machine: $(getconf _NPROCESSORS_ONLN) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "# 2 ranks x 1 thread, batch 64 per rank, $epochs epochs (median of epochs 1..), repeats $repeats"
port=29700
for ((r = 1; r <= repeats; r++)); do
  for row in "${rows[@]}"; do
    eval "set -- $row"
    model=$1 features=$2 n=$(($3 / scale)) ours=$4 theirs=$5
    common=(--model "$model" -b 64 --epochs "$epochs" --train-limit "$n" --test-limit 256)
    rm -rf "$tmp/out"
    "${mpirun[@]}" "$build/bin/ddptrain" "${common[@]}" --threads 1 $ours --output-dir "$tmp/out" > /dev/null
    ips=$(sed -n 's/.*"images_per_sec": \([0-9.e+]*\).*/\1/p' "$tmp/out/metrics.jsonl" | median_after_first)
    echo "$model $features ddprun $r $ips" >> "$tmp/results"
    if [ "$theirs" != - ]; then
      port=$((port + 1))
      MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=$((1 << 30)) "$python" scripts/reference/pytorch_ddp_mnist.py --ranks 2 \
        --threads 1 --port "$port" "${common[@]}" $theirs 2> /dev/null > "$tmp/py"
      ips=$(sed -n 's/^pytorch_ddp epoch [0-9]*: .*images\/s \([0-9.]*\)$/\1/p' "$tmp/py" | median_after_first)
      echo "$model $features pytorch-ddp $r $ips" >> "$tmp/results"
    fi
    awk 'NF != 5 || $5 == "" { exit 1 }' "$tmp/results" ||
      { echo "train_features.sh: a run of $model $features printed no result" >&2; exit 1; }
    grep "^$model $features .* $r [^ ]*$" "$tmp/results" |
      awk '{ printf "run %d  %-9s %-8s %-12s images/s %8.1f\n", $4, $1, $2, $3, $5 }'
  done
done

echo
awk '{ print $1 "/" $2 "/" $3, $5 }' "$tmp/results" | awk -f scripts/bench/summarize.awk > "$tmp/stats"
json=""
while read -r key ips lo hi runs; do
  IFS=/ read -r model features impl <<< "$key"
  printf '%-9s %-8s %-12s images/s median %8.1f (range %.1f-%.1f, %d runs)\n' "$model" "$features" "$impl" "$ips" "$lo" "$hi" "$runs"
  json+=$(printf '{"impl": "%s", "model": "%s", "features": "%s", "ranks": 2, "images_per_sec": %.1f}\\n' "$impl" "$model" \
    "$features" "$ips")
done < "$tmp/stats"
echo
# ratio NAME MODEL FEATURES-A IMPL-A FEATURES-B IMPL-B: A / B paired by repeat, median (range; per repeat).
ratio() {
  awk -v m="$2" -v a="$3/$4" -v b="$5/$6" '$1 == m && $2 "/" $3 == a { x[$4] = $5 } $1 == m && $2 "/" $3 == b { y[$4] = $5 }
    END { for (r = 1; r <= '"$repeats"'; r++) if ((r in x) && (r in y)) printf "%.3f\n", x[r] / y[r] }' "$tmp/results" > "$tmp/ratios"
  [ -s "$tmp/ratios" ] || return 0
  awk '{ print "ratio", $1 }' "$tmp/ratios" | awk -f scripts/bench/summarize.awk | {
    read -r _ median lo hi _
    printf '%-9s %-44s median %.2f (range %.2f-%.2f; per repeat %s)\n' "$2" "$1" "$median" "$lo" "$hi" "$(paste -sd' ' "$tmp/ratios")"
  }
}
ratio "ddprun / pytorch-ddp, no feature" mnist_cnn none ddprun none pytorch-ddp
ratio "ddprun / pytorch-ddp, both --amp" mnist_cnn amp ddprun amp pytorch-ddp
ratio "--amp cost, ddprun: with / without" mnist_cnn amp ddprun none ddprun
ratio "--amp cost, pytorch-ddp: with / without" mnist_cnn amp pytorch-ddp none pytorch-ddp
ratio "ddprun / pytorch-ddp, no feature" resnet18 none ddprun none pytorch-ddp
ratio "--sync-bn cost, ddprun: with / without" resnet18 sync-bn ddprun none ddprun
ratio "ddprun --sync-bn / pytorch-ddp plain BatchNorm" resnet18 sync-bn ddprun none pytorch-ddp
echo
printf '%b' "$json"
