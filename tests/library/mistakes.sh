#!/usr/bin/env bash
# Runs one case of tests/library/mistakes.cpp on 2 ranks and checks what the user sees: the exit code, the one line
# on stderr, and that a habit which used to hang ends within seconds. Usage: mistakes.sh MISTAKES_BINARY CASE
set -euo pipefail
binary=$1
kase=$2
work=$(mktemp -d /tmp/ddprun_mistakes.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
fail() {
  echo "FAILED ($kase): $*" >&2
  echo "--- stderr:" >&2
  cat "$work/err" >&2
  exit 1
}

start=$(date +%s.%N)
code=0
timeout 90 mpirun --oversubscribe --bind-to none -np 2 "$binary" "$kase" "$work/out" > "$work/out.txt" 2> "$work/err" ||
  code=$?
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
cat "$work/out.txt"
echo "$kase: exit code $code after ${elapsed} s"
[ "$code" -eq 124 ] && fail "still running after 90 s: it hung"
grep -q "terminate called\|Backtrace\|\[[0-9a-z.-]*:[0-9]*\] \*\*\*" "$work/err" && fail "an abort's backtrace instead of one line"
# Lines that are not Open MPI's own framing ("-----", "MPI_ABORT was invoked", ...).
ours() { grep -E "^ddprun: " "$work/err" || true; }
within() { [ "$(echo "$elapsed < $1" | bc)" -eq 1 ] || fail "took ${elapsed} s, expected under $1 s"; }

case $kase in
  save_on_rank0)
    # torchvision's save_on_master habit: rank 0 alone calls save(), rank 1 goes on to the next step's all-reduce.
    [ "$code" -eq 2 ] || fail "exit code $code, expected 2 (a call the library cannot honour)"
    ours | grep -q "CheckpointManager::save() at epoch 1 step 0: rank 1 will never make this call: it waits in .*make it on every rank" ||
      fail "no line saying rank 1 will never call save()"
    within 30 ;;
  save_then_exit)
    # Rank 1 returned from main before rank 0's save: the save cannot complete; it must not wait for the timeout.
    [ "$code" -ne 0 ] || fail "exit code 0: a save rank 1 never joined reported success"
    ours | grep -q "CheckpointManager::save() at epoch 1 step 0: rank 1 has not made this call" || fail "no line naming rank 1"
    within 40 ;;
  weights_differ)
    [ "$code" -eq 2 ] || fail "exit code $code, expected 2"
    ours | grep -q "the ranks' weights differ" || fail "no line saying the ranks' weights differ"
    [ -e "$work/out/checkpoint.pth" ] && fail "a checkpoint of rank 0's weights was written"
    within 30 ;;
  unwrapped_same)
    [ "$code" -eq 0 ] || fail "exit code $code, expected 0"
    grep -q "^saved" "$work/out.txt" || fail "not saved"
    ours | grep -q "DistributedDataParallel" || fail "no warning that the model was not wrapped"
    within 30 ;;
  forward_outside)
    [ "$code" -ne 0 ] || fail "exit code 0: a forward outside the wrapper went unnoticed"
    ours | grep -q "without the wrapper's forward" || fail "no line saying the model ran without the wrapper"
    within 30 ;;
  optimizer_zero_grad)
    [ "$code" -eq 0 ] || fail "exit code $code, expected 0"
    grep -q "the ranks' weights are equal" "$work/out.txt" || fail "no report"
    [ -e "$work/out/checkpoint.pth" ] || fail "no checkpoint"
    within 30 ;;
  exception_on_rank1)
    [ "$code" -eq 1 ] || fail "exit code $code, expected 1 (not 134, an abort)"
    [ "$(ours | wc -l)" -eq 1 ] || fail "expected exactly one line from the library"
    ours | grep -q "^ddprun: error on rank 1: something in the user's code went wrong on this rank; aborting all ranks$" ||
      fail "the line does not name rank 1 and the message"
    within 30 ;;
  usage_everywhere)
    [ "$code" -eq 2 ] || fail "exit code $code, expected 2"
    [ "$(ours | wc -l)" -eq 1 ] || fail "expected exactly one line (rank 0's), got $(ours | wc -l)"
    ours | grep -q "^ddprun: error: --widgets 0 is out of range: must be at least 1$" || fail "not the option's line"
    grep -q "MPI_ABORT" "$work/err" && fail "an agreed error aborted the job instead of returning"
    within 30 ;;
  data_loader)
    [ "$code" -eq 0 ] || fail "exit code $code, expected 0"
    grep -q "the DataLoader followed the sampler" "$work/out.txt" || fail "no report" ;;
  scaler_inf_on_rank1)
    [ "$code" -eq 0 ] || fail "exit code $code, expected 0"
    for r in 0 1; do
      grep -q "^rank $r step 0: stepped, scale 65536$" "$work/out.txt" || fail "rank $r did not step at step 0"
      grep -q "^rank $r step 1: skipped, scale 32768$" "$work/out.txt" ||
        fail "rank $r did not skip the step rank 1 overflowed in, or did not back off"
    done ;;
  scaler_no_update)
    [ "$code" -eq 2 ] || fail "exit code $code, expected 2"
    ours | grep -q "step() has already been called since the last update(); call update() each step" ||
      fail "no line saying update() is missing"
    within 30 ;;
  *) fail "unknown case" ;;
esac
echo "PASS $kase"
