#!/usr/bin/env bash
# All-reduce bus bandwidth, 4 KiB to 256 MiB, of ddprun's MPI communicator against a raw MPI_Allreduce loop on the
# same buffers (measured alternately in one program) and PyTorch's gloo backend (/usr/bin/python3's
# torch.distributed, same sizes and method); prints the nccl-tests style rows, a table of ratios with the targets
# (>= 0.95x MPI from 1 MiB, ahead of gloo everywhere, >= 1.5x MPI from 32 MiB), and one JSON line per impl and size.
#   scripts/bench/allreduce.sh [--ranks N] [--repeats R] [--max-bytes B] [--quick]
#   scripts/bench/allreduce.sh --hosts node1:2,node2:2 [--link-rate 1gbit] [--repeats R] [--max-bytes B]
# --quick: 4 KiB to 1 MiB, 1 repeat, short measurements (the ctest smoke run). Builds what it needs into ./build
# (or $BUILD_DIR).
# --hosts: across simulated nodes (scripts/cluster/cluster.sh, as root; node names node1..node4), links shaped to
# --link-rate: ddprun's communicator against Open MPI's flat default (coll/tuned) measured alternately in one run, and
# Open MPI's hierarchical coll/han in a run of its own; prints the ratios against the goals (>= 1.3x flat from 4 MiB,
# never below 0.95x) and the link budget (busbw / link rate), then JSON lines with a "hosts" field.
set -euo pipefail
cd "$(dirname "$0")/../.."
ranks=2 repeats=5 max_bytes=$((256 << 20)) seconds=0.1 hosts="" link_rate=1gbit
while [ $# -gt 0 ]; do
  case $1 in
    --hosts) hosts=$2; shift 2 ;;
    --link-rate) link_rate=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --max-bytes) max_bytes=$2; shift 2 ;;
    --quick) repeats=1 max_bytes=$((1 << 20)) seconds=0.01; shift ;;
    *) echo "allreduce.sh: unknown argument $1 (use --ranks N, --repeats R, --max-bytes B, --quick, --hosts H, --link-rate R)" >&2; exit 2 ;;
  esac
done
python=/usr/bin/python3
"$python" -c 'import torch.distributed' 2> /dev/null ||
  { echo "allreduce.sh: $python has no torch.distributed (run scripts/install-deps.sh)" >&2; exit 1; }
build=${BUILD_DIR:-build}
[ -d "$build" ] || scripts/build.sh > /dev/null
cmake --build "$build" --target allreduce_bench > /dev/null
cores=$(getconf _NPROCESSORS_ONLN)  # (nproc would answer OMP_NUM_THREADS)
if [ -n "$hosts" ]; then
  [[ $hosts =~ ^(node[1-4]:[0-9]+,)+node[1-4]:[0-9]+$ ]] ||
    { echo "allreduce.sh: --hosts '$hosts': give simulated nodes with slots, e.g. node1:2,node2:2" >&2; exit 2; }
  cluster=scripts/cluster/cluster.sh
  nodes=$(tr ',' '\n' <<< "$hosts" | cut -d: -f1 | sort -u | wc -l)
  ranks=$(tr ',' '\n' <<< "$hosts" | cut -d: -f2 | paste -sd+ | bc)
  tmp=$(mktemp -d)
  trap '"$cluster" stop > /dev/null; rm -rf "$tmp"' EXIT
  "$cluster" start --nodes "$nodes" --link-rate "$link_rate" > /dev/null
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
  run=("$cluster" exec node1 mpirun -H "$hosts" -np "$ranks" --bind-to none --mca plm_rsh_agent
    "$PWD/scripts/cluster/rsh-agent.sh")
  # The ranks on other nodes get the communicator's settings from this environment, as users pass them (mpirun -x).
  for variable in $(compgen -e | grep '^DDPRUN_COMM_' || true); do run+=(-x "$variable"); done
  # A measurement there is a few collectives of up to a second each; give each size a little longer.
  bench=("$(cd "$build" && pwd)/bin/allreduce_bench" --repeats "$repeats" --max-bytes "$max_bytes" --seconds 0.3)
  echo "# machine: $cores cores, $(uname -r); $nodes simulated nodes ($hosts), links $link_rate"
  "${run[@]}" "${bench[@]}" > "$tmp/flat" 2>&1 || { echo "allreduce.sh: the flat run failed:" >&2; tail -20 "$tmp/flat" >&2; exit 1; }
  grep -v '^RESULT\|^PAIRED' "$tmp/flat"
  han=ok
  "${run[@]}" --mca coll_han_priority 100 "${bench[@]}" --only mpi > "$tmp/han" 2>&1 ||
    han="failed: $(grep -m1 -o 'exited on signal [0-9]* ([A-Za-z ]*)' "$tmp/han" || tail -1 "$tmp/han")"
  echo "# Open MPI coll/han (--mca coll_han_priority 100): $han"
  sed 's/^RESULT mpi/RESULT han/' "$tmp/han" | grep '^RESULT' > "$tmp/han_results" || true
  grep '^RESULT' "$tmp/flat" | sed 's/^RESULT mpi/RESULT flat/' > "$tmp/results"
  cat "$tmp/han_results" >> "$tmp/results"
  echo
  # ddprun/flat: the median of the paired per-repeat ratios (alternating, one program); ddprun/han: medians.
  # "link used": the bytes ddprun's all-reduce sends over each node's link per direction, over time and link rate.
  # The flat ring sends 2 (n - 1) / n of the buffer (busbw's own factor); Rabenseifner's, with each node's ranks
  # numbered together, 2 (k - 1) / k on k nodes (its steps between nodes carry a local_size-th of the ring's bytes).
  tree=0; grep -q "Rabenseifner's all-reduce from" "$tmp/flat" && tree=1
  awk -v rate="$link_rate" -v hosts="$hosts" -v nodes="$nodes" -v ranks="$ranks" -v tree="$tree" '
    FNR == 1 { file++ }
    file == 1 && $1 == "PAIRED" { paired[$3] = $4; lo[$3] = $5; hi[$3] = $6; next }
    file == 2 { busbw[$2, $4] = $5; if (!($4 in seen)) { seen[$4] = 1; sizes[++n] = $4 } }
    END {
      r = rate; unit = 1; sub(/bit$/, "", r)
      if (r ~ /g$/) unit = 1e9; else if (r ~ /m$/) unit = 1e6; else if (r ~ /k$/) unit = 1e3
      sub(/[kmg]$/, "", r); link = r * unit / 8 / 1e9
      crossing = tree ? (2 * (nodes - 1) / nodes) / (2 * (ranks - 1) / ranks) : 1
      printf "# busbw in GB/s (medians) on %s, link %s = %.3f GB/s; ddprun/flat is the median of paired ratios\n", hosts, rate, link
      printf "%12s %9s %9s %9s %11s %13s %10s %10s  %s\n", "size(B)", "ddprun", "flat", "han", "ddprun/flat",
             "(range)", "ddprun/han", "link used", "goal"
      missed = 0; budget = ""
      for (i = 1; i <= n; i++) {
        s = sizes[i]; d = busbw["ddprun", s]; f = busbw["flat", s]; h = busbw["han", s]; p = paired[s]
        verdict = "ok"
        if (p < 0.95) verdict = "MISSED >= 0.95x flat"
        if (s >= 4194304 && p < 1.3) verdict = "MISSED >= 1.3x flat"
        if (verdict != "ok") missed++
        used = s >= 4194304 ? sprintf("%.2f", d * crossing / link) : "-"
        if (s >= 4194304) budget = budget " " used
        printf "%12d %9.3f %9.3f %9s %11.2f %6.2f-%-6.2f %10s %10s  %s\n", s, d, f, h == "" ? "-" : sprintf("%.3f", h),
               p, lo[s], hi[s], h == "" ? "-" : sprintf("%.2f", d / h), used, verdict
      }
      printf "# %d of %d sizes miss a goal (>= 0.95x flat at every size, >= 1.3x from 4 MiB)\n", missed, n
      printf "# link used from 4 MiB (goal >= 0.85):%s; ddprun %s\n", budget,
             tree ? "crosses with Rabenseifner'"'"'s bytes, 2 (k - 1) / k of the buffer on k nodes" : "crosses as a ring"
    }' "$tmp/flat" "$tmp/results"
  echo
  awk -v hosts="$hosts" '{ printf "{\"impl\": \"%s\", \"ranks\": %d, \"hosts\": \"%s\", \"bytes\": %d, \"busbw_GBps\": %.4f, \"busbw_min\": %.4f, \"busbw_max\": %.4f}\n", $2, $3, hosts, $4, $5, $6, $7 }' "$tmp/results"
  exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mpirun=(mpirun -np "$ranks" --bind-to none)
[ "$ranks" -le "$cores" ] || mpirun+=(--oversubscribe)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "# machine: $cores cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r)"
"${mpirun[@]}" "$build/bin/allreduce_bench" --repeats "$repeats" --max-bytes "$max_bytes" --seconds "$seconds" |
  tee "$tmp/ours" | grep -v '^RESULT\|^PAIRED'
"${mpirun[@]}" "$python" bench/allreduce_gloo.py --store "$tmp/store" --repeats "$repeats" \
  --max-bytes "$max_bytes" --seconds "$seconds" | tee "$tmp/gloo" | grep -v '^RESULT'

grep -h '^RESULT' "$tmp/ours" "$tmp/gloo" > "$tmp/results"
echo
# ddprun/mpi: the median of the per-repeat ratios (measured back to back), with their range; ddprun/gloo: medians.
awk '
  $1 == "PAIRED" { paired[$3] = $4; paired_lo[$3] = $5; paired_hi[$3] = $6; next }
  { busbw[$2, $4] = $5; if (!($4 in seen)) { seen[$4] = 1; sizes[++n] = $4 } }
  END {
    printf "# busbw in GB/s (medians), %d ranks; ddprun/mpi is the median of the paired per-repeat ratios\n", ranks
    printf "%12s %9s %9s %9s %10s %13s %11s  %s\n", "size(B)", "ddprun", "mpi", "gloo", "ddprun/mpi", "(range)",
           "ddprun/gloo", "targets"
    missed = 0
    for (i = 1; i <= n; i++) {
      s = sizes[i]; d = busbw["ddprun", s]; m = busbw["mpi", s]; g = busbw["gloo", s]; r = paired[s]
      verdict = "ok"
      if (s >= 1048576 && r < 0.95) verdict = "MISSED >= 0.95x mpi"
      if (s >= 33554432 && r < 1.5) verdict = "MISSED >= 1.5x mpi"
      if (d <= g) verdict = "MISSED ahead of gloo"
      if (verdict != "ok") missed++
      printf "%12d %9.3f %9.3f %9.3f %10.2f %6.2f-%-6.2f %11.2f  %s\n", s, d, m, g, r, paired_lo[s], paired_hi[s],
             d / g, verdict
    }
    printf "# %d of %d sizes miss a target\n", missed, n
  }' ranks="$ranks" <(grep -h '^PAIRED' "$tmp/ours") "$tmp/results"
echo
awk '{ printf "{\"impl\": \"%s\", \"ranks\": %d, \"bytes\": %d, \"busbw_GBps\": %.4f, \"busbw_min\": %.4f, \"busbw_max\": %.4f}\n", $2, $3, $4, $5, $6, $7 }' \
  "$tmp/results"
