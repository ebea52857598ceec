#!/usr/bin/env bash
# Training images/s of ddptrain on Fashion-MNIST, 2 ranks x 1 intra-op thread, for mnist_cnn, mlp and resnet18 (a
# small size: 28x28 images), against
#   per-param:     the same program with --grad-sync per-param (each gradient all-reduced on its own after backward,
#                  the pytorch/examples cpp/distributed baseline);
#   pytorch-ddp:   PyTorch's Python DDP over gloo, same model, batch, data, sampler and threads
#                  (scripts/reference/pytorch_ddp_mnist.py with /usr/bin/python3), and the same glibc malloc setting
#                  ddptrain makes for itself (trainer/host_memory.cpp), through glibc's environment variables: with
#                  glibc's defaults Python pays a page fault per fresh page of every large tensor, every step;
#   compute-limit: twice the images/s of one process doing only forward, backward, SGD step on ready batches
#                  (bench/train_compute_bench.cpp); besides, without a target, compute-concurrent: the sum of two
#                  such processes run at the same time (sharing caches and memory bandwidth as two ranks do);
#                  compute-lockstep: the same two processes stepping together, as synchronous data-parallel training
#                  must (after each backward both wait, asleep, for the slower one: --processes 2 --lockstep), and
#   ceiling:       what 2 ranks can reach on these cores: each step takes at least the compute-lockstep step plus one
#                  all-reduce of all its gradients by ddprun's communicator with both ranks ready and nothing else
#                  running (bench/allreduce_bench.cpp at the model's gradient bytes): with every core busy computing,
#                  the all-reduce's copies and sums cannot hide behind backward, they take the same cores.
#                  Where a target is missed and the ceiling itself is below it (the paired ratio ceiling / baseline),
#                  the verdict says the target is out of reach on this machine.
# All run back to back in each repeat (ddprun and per-param in alternating order); a run's images/s is the median
# over its epochs after the first (which pays for start-up and DDP's bucket rebuild). Prints each run, then per model
# the medians and ranges over repeats, the paired ratios (per repeat) with the issue's targets (and the ceiling's
# ratio to the same baseline), and one JSON line per model and impl, after a step breakdown per model and rank
# (scripts/bench/timeline_summary.py on one more ddptrain run's --timeline, beside the compute-only step):
#   {"impl": "ddprun"|"per-param"|"pytorch-ddp"|"compute-limit"|"compute-concurrent"|"compute-lockstep"|"ceiling", "model": m, "ranks": 2, "images_per_sec": x, "test_acc1": a}
#   (with --hosts: "ranks": N, "hosts": H before "images_per_sec")
#   scripts/bench/train_throughput.sh [--repeats R] [--epochs E] [--models "mnist_cnn mlp resnet18"] [--quick]
#                                     [--hosts node1:2,node2:2 [--link-rate 1gbit]]
# --quick: 1 repeat, 2 epochs, a few hundred samples (the ctest smoke run). Builds what it needs into ./build (or
# $BUILD_DIR).
# --hosts: on simulated nodes (scripts/cluster/cluster.sh, as root; links shaped to --link-rate): ddprun, per-param
# and PyTorch DDP (gloo, one process per rank started by the same mpirun) on those ranks, without the compute rows
# (the nodes share this machine's cores) and without targets; the ratios are printed per repeat as well.
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=3 epochs=3 models="mnist_cnn mlp resnet18" test_limit=2000 hosts="" link_rate=1gbit
declare -A samples=([mnist_cnn]=12000 [mlp]=4000 [resnet18]=2048)
while [ $# -gt 0 ]; do
  case $1 in
    --repeats) repeats=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --quick) repeats=1 epochs=2 test_limit=256; samples=([mnist_cnn]=512 [mlp]=256 [resnet18]=256); shift ;;
    --hosts) hosts=$2; shift 2 ;;
    --link-rate) link_rate=$2; shift 2 ;;
    *) echo "train_throughput.sh: unknown argument $1 (use --repeats R, --epochs E, --models LIST, --quick, --hosts H, --link-rate R)" >&2; exit 2 ;;
  esac
done
[ "$epochs" -ge 2 ] || { echo "train_throughput.sh: --epochs must be at least 2 (the first is not timed)" >&2; exit 2; }
python=/usr/bin/python3
"$python" -c 'import torch.distributed' 2> /dev/null ||
  { echo "train_throughput.sh: $python has no torch.distributed (run scripts/install-deps.sh)" >&2; exit 1; }
build=${BUILD_DIR:-build}
[ -d "$build" ] || scripts/build.sh > /dev/null
cmake --build "$build" --target ddptrain train_compute_bench allreduce_bench > /dev/null
cores=$(getconf _NPROCESSORS_ONLN)  # (nproc would answer OMP_NUM_THREADS)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
ranks=2 master=127.0.0.1
mpirun=(mpirun -np 2 --bind-to none)
[ "$cores" -ge 2 ] || mpirun+=(--oversubscribe)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "$hosts" ]; then
  [[ $hosts =~ ^(node[1-4]:[0-9]+,)+node[1-4]:[0-9]+$ ]] ||
    { echo "train_throughput.sh: --hosts '$hosts': give simulated nodes with slots, e.g. node1:2,node2:2" >&2; exit 2; }
  nodes=$(tr ',' '\n' <<< "$hosts" | cut -d: -f1 | sort -u | wc -l)
  ranks=$(tr ',' '\n' <<< "$hosts" | cut -d: -f2 | paste -sd+ | bc)
  master=${hosts%%:*}
  trap 'scripts/cluster/cluster.sh stop > /dev/null; rm -rf "$tmp"' EXIT
  scripts/cluster/cluster.sh start --nodes "$nodes" --link-rate "$link_rate" > /dev/null
  build=$(cd "$build" && pwd)
  # /tmp is the same folder on every simulated node (only /run/ddprun-cluster/local is per node).
  mpirun=(scripts/cluster/cluster.sh exec "$master" mpirun -H "$hosts" -np "$ranks" --bind-to none
    --mca plm_rsh_agent "$PWD/scripts/cluster/rsh-agent.sh" -x OMP_NUM_THREADS)
fi
# train_compute_bench's output in file $1: the images/s of each RESULT line (one per process), and with
# --processes 2 their sum.
results_of() { sed -n 's/^RESULT .* images_per_sec //p' "$1"; }
sum_of_results() { results_of "$1" | awk '{ s += $1; n++ } END { if (n == 2) print s }'; }
median_after_first() { tail -n +2 | awk '{ print "x", $1 }' | awk -f scripts/bench/summarize.awk | cut -d' ' -f2; }

echo "# machine: $cores cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "# $ranks ranks x 1 thread${hosts:+ on $hosts (links $link_rate)}, batch 64 per rank, $epochs epochs (median of epochs 1..), repeats $repeats"
port=29600
for ((r = 1; r <= repeats; r++)); do
  for model in $models; do
    n=${samples[$model]}
    common=(--model "$model" -b 64 --epochs "$epochs" --train-limit "$n" --test-limit "$test_limit")
    order="ddprun per-param"
    [ $((r % 2)) -eq 0 ] && order="per-param ddprun"  # alternate, so that neither always runs first
    for impl in $order; do
      sync=ddp; [ "$impl" = per-param ] && sync=per-param
      rm -rf "$tmp/out"
      "${mpirun[@]}" "$build/bin/ddptrain" "${common[@]}" --threads 1 --grad-sync "$sync" --output-dir "$tmp/out" > /dev/null
      ips=$(sed -n 's/.*"images_per_sec": \([0-9.e+]*\).*/\1/p' "$tmp/out/metrics.jsonl" | median_after_first)
      acc=$(tail -n 1 "$tmp/out/metrics.jsonl" | sed -n 's/.*"test_acc1": \([0-9.]*\).*/\1/p')
      echo "$model $impl $r $ips $acc" >> "$tmp/results"
    done
    port=$((port + 1))
    if [ -n "$hosts" ]; then
      MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=$((1 << 30)) "${mpirun[@]}" -x MALLOC_MMAP_MAX_ -x MALLOC_TRIM_THRESHOLD_ \
        "$python" "$PWD/scripts/reference/pytorch_ddp_mnist.py" --from-mpirun --master-addr "$master" --threads 1 \
        --port "$port" "${common[@]}" > "$tmp/py"
    else
      MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=$((1 << 30)) \
        "$python" scripts/reference/pytorch_ddp_mnist.py --ranks 2 --threads 1 --port "$port" "${common[@]}" > "$tmp/py"
    fi
    ips=$(sed -n 's/^pytorch_ddp epoch [0-9]*: .*images\/s \([0-9.]*\)$/\1/p' "$tmp/py" | median_after_first)
    acc=$(sed -n 's/.*"test_acc1": \([0-9.]*\).*/\1/p' "$tmp/py")
    echo "$model pytorch-ddp $r $ips $acc" >> "$tmp/results"
    if [ -z "$hosts" ]; then
      compute=("$build/bin/train_compute_bench" --model "$model" -b 64 --samples "$n" --epochs "$epochs" --ranks 2 --threads 1)
      "${compute[@]}" > "$tmp/c0"
      one=$(results_of "$tmp/c0")
      echo "$model compute-limit $r $(awk -v x="$one" 'BEGIN { print 2 * x }') null" >> "$tmp/results"
      # Not targets: the limit when two processes share the machine's caches and memory bandwidth, and when they
      # also wait for each other every step (each step then takes as long as the slower process's).
      "${compute[@]}" --processes 2 > "$tmp/c1"
      both=$(sum_of_results "$tmp/c1")
      "${compute[@]}" --processes 2 --lockstep > "$tmp/c2"
      lockstep=$(sum_of_results "$tmp/c2")
      [ -n "$both" ] && [ -n "$lockstep" ] ||
        { echo "train_throughput.sh: train_compute_bench --processes 2 printed no two results for $model" >&2; exit 1; }
      echo "$model compute-concurrent $r $both null" >> "$tmp/results"
      echo "$model compute-lockstep $r $lockstep null" >> "$tmp/results"
      # The ceiling: the compute-lockstep step plus the all-reduce of the gradients (2 ranks: busbw = algbw).
      grad_bytes=$(sed -n 's/^GRADIENT bytes //p' "$tmp/c0")
      [[ $grad_bytes =~ ^[1-9][0-9]*$ ]] ||
        { echo "train_throughput.sh: train_compute_bench printed no gradient bytes for $model" >&2; exit 1; }
      busbw=$("${mpirun[@]}" "$build/bin/allreduce_bench" --min-bytes "$grad_bytes" --max-bytes "$grad_bytes" \
        --only ddprun --repeats 5 --seconds 0.2 | sed -n 's/^RESULT ddprun 2 [0-9]* \([0-9.]*\) .*/\1/p')
      [[ $busbw =~ ^[0-9.]+$ && $busbw != 0.0000 ]] ||
        { echo "train_throughput.sh: allreduce_bench gave no all-reduce time for $model ($grad_bytes bytes)" >&2; exit 1; }
      allreduce_ms=$(awk -v b="$grad_bytes" -v bw="$busbw" 'BEGIN { printf "%.3f", b / (bw * 1e9) * 1e3 }')
      echo "$model allreduce-ms $r $allreduce_ms $grad_bytes" >> "$tmp/allreduce"
      echo "$model ceiling $r $(awk -v c="$lockstep" -v t="$allreduce_ms" 'BEGIN { print 128 / (128 / c + t / 1e3) }') null" \
        >> "$tmp/results"
    fi
    awk 'NF != 5 { exit 1 }' "$tmp/results" ||
      { echo "train_throughput.sh: a run of $model printed no result: $(awk 'NF != 5' "$tmp/results")" >&2; exit 1; }
    grep "^$model .* $r [^ ]* [^ ]*$" "$tmp/results" | tail -n "$([ -n "$hosts" ] && echo 3 || echo 7)" |
      awk '{ printf "run %d  %-9s %-18s images/s %8.1f  test_acc1 %s\n", $3, $1, $2, $4, $5 }'
    if [ -z "$hosts" ]; then
      echo "run $r  $model all-reduce of the gradients ($grad_bytes bytes), both ranks ready: $allreduce_ms ms"
      # Where lockstep loses to two at once: one process slower than the other (a slower core), the other waiting.
      echo "run $r  $model two at once, each process: $(results_of "$tmp/c1" | paste -sd' ' |
        sed 's/ / and /') images/s; in lockstep, waiting for the other per step in the last epoch: $(
        sed -n "s/^process [01] epoch $((epochs - 1)) .* waiting for the others \([0-9.]*\) ms.*/\1/p" "$tmp/c2" |
        paste -sd' ' | sed 's/ / and /') ms"
    fi
  done
done

echo
# Per model: medians and ranges over repeats; ratios paired within a repeat; the targets.
# paired NUMERATOR: per repeat of $model, NUMERATOR's images/s over $base's (the first pass collects the numerator's
# figure of each repeat, whichever ran first in it).
paired() {
  awk -v m="$model" -v a="$1" -v b="$base" 'NR == FNR { if ($1 == m && $2 == a) d[$3] = $4; next }
    $1 == m && $2 == b && ($3 in d) { printf "%.3f\n", d[$3] / $4 }' "$tmp/results" "$tmp/results"
}
median_of() { awk '{ print "ratio", $1 }' | awk -f scripts/bench/summarize.awk; }
json=""
for model in $models; do
  awk -v m="$model" '$1 == m { print $2, $4 }' "$tmp/results" | awk -f scripts/bench/summarize.awk > "$tmp/stats"
  while read -r impl ips lo hi runs; do
    acc=$(awk -v m="$model" -v i="$impl" '$1 == m && $2 == i { print $5 }' "$tmp/results" | tail -n 1)
    printf '%-9s %-18s images/s median %8.1f (range %.1f-%.1f, %d runs)  test_acc1 %s\n' "$model" "$impl" "$ips" "$lo" "$hi" "$runs" "$acc"
    json+=$(printf '{"impl": "%s", "model": "%s", "ranks": %d, %s"images_per_sec": %.1f, "test_acc1": %s}\\n' "$impl" \
      "$model" "$ranks" "${hosts:+\"hosts\": \"$hosts\", }" "$ips" "$acc")
  done < "$tmp/stats"
  for base in compute-limit compute-concurrent compute-lockstep ceiling pytorch-ddp per-param; do
    case "$model/$base" in
      mnist_cnn/compute-limit) target=0.95 ;;
      mnist_cnn/pytorch-ddp | mlp/pytorch-ddp) target=1.15 ;;
      mlp/per-param) target=1.30 ;;
      */per-param) target=1.00 ;;  # the engine never loses to the naive baseline
      *) target="" ;;
    esac
    [ -n "$hosts" ] && target=""
    paired ddprun > "$tmp/ratios"
    [ -s "$tmp/ratios" ] || continue
    read -r _ ratio lo hi _ < <(median_of < "$tmp/ratios")
    verdict="(no target)"
    if [ -n "$target" ]; then
      verdict=$(awk -v x="$ratio" -v t="$target" 'BEGIN { print (x >= t ? "meets" : "MISSES") " the target >= " t }')
      reach=$(paired ceiling | median_of | cut -d' ' -f2)
      # A training run (per-param, pytorch-ddp) above the ceiling means the ceiling was no bound in that run (noise),
      # so only a ceiling at or above such a baseline can put a target out of reach.
      [ -n "$reach" ] && verdict+=$(awk -v x="$ratio" -v c="$reach" -v t="$target" -v b="$base" 'BEGIN {
        why = ""
        if (x < t && c < t) why = (b == "compute-limit" || c >= 1) ? ": out of reach here" : ": the baseline ran above it, no bound"
        printf " (ceiling / %s %.2f%s)", b, c, why }')
    fi
    printf '%-9s ddprun / %-18s median %.2f (range %.2f-%.2f; per repeat %s)  %s\n' "$model" "$base" "$ratio" "$lo" \
      "$hi" "$(paste -sd' ' "$tmp/ratios")" "$verdict"
  done
done
# median_over_repeats ROW FILE: the median over repeats of $model's ROW (4th field) in FILE.
median_over_repeats() {
  awk -v m="$model" -v i="$1" '$1 == m && $2 == i { print "x", $4 }' "$2" | awk -f scripts/bench/summarize.awk |
    cut -d' ' -f2
}
# Where a ddptrain step's time goes (one more run per model, each rank's --timeline), beside the compute-only step of
# one process alone, of two at once and of two in lockstep (from the medians above) and the ceiling; the ranks' lines
# differ where one rank waits for the other.
if [ -z "$hosts" ]; then
  echo
  for model in $models; do
    rm -rf "$tmp/out"
    "${mpirun[@]}" "$build/bin/ddptrain" --model "$model" -b 64 --epochs "$epochs" --train-limit "${samples[$model]}" \
      --test-limit "$test_limit" --threads 1 --output-dir "$tmp/out" --timeline "$tmp/timeline-{rank}.json" > /dev/null
    breakdown=$("$python" scripts/bench/timeline_summary.py "$tmp/timeline-0.json")
    alone=$(median_over_repeats compute-limit "$tmp/results")
    both=$(median_over_repeats compute-concurrent "$tmp/results")
    lockstep=$(median_over_repeats compute-lockstep "$tmp/results")
    allreduce=$(median_over_repeats allreduce-ms "$tmp/allreduce")
    awk -v m="$model" -v b="$breakdown" -v a="$alone" -v c="$both" -v l="$lockstep" -v t="$allreduce" 'BEGIN {
      printf "%-9s ddptrain %s; compute only: %.2f ms alone, %.2f ms two at once, %.2f ms in lockstep; + all-reduce %.2f ms = ceiling %.2f ms\n",
        m, b, 64000 / (a / 2), 64000 / (c / 2), 64000 / (l / 2), t, 64000 / (l / 2) + t }'
    printf '%-9s rank 1:  %s\n' "$model" "$("$python" scripts/bench/timeline_summary.py "$tmp/timeline-1.json")"
  done
fi
echo
printf '%b' "$json"
