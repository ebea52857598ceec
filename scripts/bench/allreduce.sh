#!/usr/bin/env bash
# All-reduce bus bandwidth, 4 KiB to 256 MiB, of ddprun's MPI communicator against a raw MPI_Allreduce loop on the
# same buffers (measured alternately in one program) and PyTorch's gloo backend (/usr/bin/python3's
# torch.distributed, same sizes and method); prints the nccl-tests style rows, a table of ratios with the targets
# (>= 0.95x MPI from 1 MiB, ahead of gloo everywhere, >= 1.5x MPI from 32 MiB), and one JSON line per impl and size.
#   scripts/bench/allreduce.sh [--ranks N] [--repeats R] [--max-bytes B] [--quick]
# --quick: 4 KiB to 1 MiB, 1 repeat, short measurements (the ctest smoke run). Builds what it needs into ./build
# (or $BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
ranks=2 repeats=5 max_bytes=$((256 << 20)) seconds=0.1
while [ $# -gt 0 ]; do
  case $1 in
    --ranks) ranks=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --max-bytes) max_bytes=$2; shift 2 ;;
    --quick) repeats=1 max_bytes=$((1 << 20)) seconds=0.01; shift ;;
    *) echo "allreduce.sh: unknown argument $1 (use --ranks N, --repeats R, --max-bytes B, --quick)" >&2; exit 2 ;;
  esac
done
python=/usr/bin/python3
"$python" -c 'import torch.distributed' 2> /dev/null ||
  { echo "allreduce.sh: $python has no torch.distributed (run scripts/install-deps.sh)" >&2; exit 1; }
build=${BUILD_DIR:-build}
[ -d "$build" ] || scripts/build.sh > /dev/null
cmake --build "$build" --target allreduce_bench > /dev/null
cores=$(getconf _NPROCESSORS_ONLN)  # (nproc would answer OMP_NUM_THREADS)
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
