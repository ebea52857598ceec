#!/usr/bin/env bash
# Preemption on 2 ranks (mnist_cnn with dropout): SIGUSR1 to mpirun (which forwards it to every rank) while training
# runs; all ranks stop after the same step, rank 0 writes a mid-epoch checkpoint, every rank exits with 75; the run
# continued with --resume auto ends bit-identical to an uninterrupted one. A second preemption, by SIGUSR2 to one rank
# only, stops the job too. --preempt-signals none leaves the signal's default action.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
here=$(dirname "$0")
common=(--model mnist_cnn -b 32 --train-limit 2048 --test-limit 64 --threads 1 --epochs 2 --lr-step-size 1)
run() {  # run FOLDER FLAGS...
  local dir=$1
  shift
  mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --output-dir "$dir" "$@"
}
# Starts a run in the background, waits until it has trained a step (its first mid-epoch checkpoint is there), sends
# SIGNAL to TARGET (mpirun, or one rank) and waits; sets $code.
preempt() {  # preempt FOLDER SIGNAL TARGET
  local dir=$1 signal=$2 target=$3 pid
  touch "$dir.mark"
  mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --output-dir "$dir" --resume auto --save-every-steps 1 \
    > "$dir.out" 2>&1 &
  pid=$!  # mpirun's own pid: the signal goes to mpirun, not to a shell around it
  for _ in $(seq 600); do [ "$dir/checkpoint.pth" -nt "$dir.mark" ] && break; sleep 0.05; done
  [ "$dir/checkpoint.pth" -nt "$dir.mark" ] || fail "no new checkpoint after 30 s: $(cat "$dir.out")"
  if [ "$target" = mpirun ]; then kill -"$signal" "$pid"; else pkill -"$signal" -f -n "ddptrain.*--output-dir $dir"; fi
  code=0
  wait "$pid" || code=$?
  grep -h "preempted by" "$dir.out" || true
  # Where it stopped, as epoch * 1000 + step: each preemption must land later than the one before.
  where=$(sed -n 's/.*every rank stopped after epoch \([0-9]*\) step \([0-9]*\);.*/\1 \2/p' "$dir.out" | awk '{print $1 * 1000 + $2}')
}

run "$work/ref" > /dev/null
mkdir -p "$work/pre"
: > "$work/pre.mark"
preempt "$work/pre" USR1 mpirun
[ "$code" -eq 75 ] || fail "exit code $code after SIGUSR1, expected 75: $(cat "$work/pre.out")"
grep -qE "preempted by SIGUSR1: every rank stopped after epoch [01] step [0-9]+; checkpoint saved in $work/pre; exit code 75" \
  "$work/pre.out" || fail "no preemption message: $(cat "$work/pre.out")"
first=$where
preempt "$work/pre" USR2 one-rank
[ "$where" -gt "$first" ] || fail "the second run did not continue from the first one's checkpoint: $(cat "$work/pre.out")"
[ "$code" -eq 75 ] || fail "exit code $code after SIGUSR2 to one rank, expected 75: $(cat "$work/pre.out")"
grep -q "preempted by SIGUSR2" "$work/pre.out" || fail "no preemption message for SIGUSR2: $(cat "$work/pre.out")"
run "$work/pre" --resume auto > "$work/pre.final" 2>&1 || fail "the resume failed: $(cat "$work/pre.final")"
grep -q "^epoch 1/1" "$work/pre.final" || fail "the resumed run did not train to the end: $(cat "$work/pre.final")"
/usr/bin/python3 "$here/same_state.py" "$work/ref/checkpoint.pth" "$work/pre/checkpoint.pth" ||
  fail "preempted twice and resumed: not bit-identical to the uninterrupted run"

mkdir -p "$work/off"
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --output-dir "$work/off" --preempt-signals none \
  --save-every-steps 1 > "$work/off.out" 2>&1 &
pid=$!
for _ in $(seq 600); do [ -f "$work/off/checkpoint.pth" ] && break; sleep 0.05; done
[ -f "$work/off/checkpoint.pth" ] || fail "--preempt-signals none: no checkpoint after 30 s: $(cat "$work/off.out")"
kill -USR1 "$pid"
code=0
wait "$pid" || code=$?
[ "$code" -ne 0 ] && [ "$code" -ne 75 ] || fail "--preempt-signals none: exit code $code, expected the signal's default"
echo "PASSED: SIGUSR1 to mpirun and SIGUSR2 to one rank preempt with exit code 75; the resumed run is bit-identical"
