#!/usr/bin/env bash
# ddptrain names the BLAS it got at start-up, and warns when it is the reference BLAS (forced here through
# LD_LIBRARY_PATH, which wins over the libblas.so.3 alternative that install-deps.sh points at OpenBLAS).
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
run() { mpirun -np 1 "$@" "$bin/ddptrain" --epochs 1 --train-limit 64 --test-limit 64 --output-dir "$work" 2>&1; }

log=$(run)
echo "$log" | grep 'BLAS:'
grep -q '^ddptrain: BLAS: OpenBLAS (' <<< "$log" || fail "OpenBLAS (installed by install-deps.sh) not reported"
grep -q 'reference BLAS' <<< "$log" && fail "warned about the reference BLAS while OpenBLAS is in use"

reference=/usr/lib/x86_64-linux-gnu/blas
if [ ! -e "$reference/libblas.so.3" ]; then
  echo "SKIPPED: no reference BLAS at $reference"
  exit 77
fi
log=$(run -x LD_LIBRARY_PATH="$reference")
echo "$log" | grep 'BLAS'
grep -q "^ddptrain: BLAS: reference BLAS ($reference/" <<< "$log" || fail "the reference BLAS was not recognised"
grep -q '^ddptrain: warning: LibTorch is using the reference BLAS' <<< "$log" || fail "no warning for the reference BLAS"
echo "PASSED"
