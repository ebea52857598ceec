#!/usr/bin/env bash
# train_compute_bench --processes 2 --lockstep, the benchmark's model of synchronous data-parallel steps: the two
# compute-only processes step together, so their images/s agree and each says how long it waited for the other
# (as a wait, not as backward: stopped for 0.6 s, one makes the other wait);
# without --lockstep each runs at its own pace; --lockstep without --processes is refused; and when one process dies
# the others stop with an error instead of waiting for ever (two processes or three).
# Usage: train_compute_lockstep.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/../e2e/common.sh"
bench=("$1/bin/train_compute_bench" --model mnist_cnn -b 32 --ranks 2 --threads 1)

"${bench[@]}" --samples 2048 --epochs 2 --processes 2 --lockstep > "$work/lockstep" || fail "the lockstep run failed"
cat "$work/lockstep"
[ "$(grep -c '^RESULT model mnist_cnn images_per_sec' "$work/lockstep")" = 2 ] || fail "not one result per process"
[ "$(grep -c '^GRADIENT bytes' "$work/lockstep")" = 1 ] || fail "not one gradient size"
for p in 0 1; do
  for e in 0 1; do
    grep -qE "^process $p epoch $e images/s [0-9.]+  per step: .* waiting for the others [0-9.]+ ms, " "$work/lockstep" ||
      fail "no epoch $e line with its wait from process $p"
  done
done
# Stepping together, the two finish each epoch together (32 steps, ~1 s; only the last optimizer step is not waited
# for): their figures agree to 2%.
sed -n 's/^RESULT .* images_per_sec //p' "$work/lockstep" | paste -sd' ' |
  awk '{ exit !(($1 - $2) ^ 2 < (0.02 * $1) ^ 2) }' || fail "the lockstep processes' images/s differ by more than 2%"

# Process 1 stopped for 0.6 s inside epoch 1: process 0 waits for it, and says so as a wait, not as backward (each
# epoch line's phases add up to its step time, batch / images/s).
"${bench[@]}" --samples 2048 --epochs 3 --processes 2 --lockstep > "$work/stopped" &
parent=$!
for _ in $(seq 600); do grep -q "^process 1 epoch 0" "$work/stopped" && break; sleep 0.05; done
sleep 0.3
child=$(pgrep -P "$parent")
kill -STOP "$child"
sleep 0.6
kill -CONT "$child"
wait "$parent" || fail "the lockstep run with a stopped process failed"
cat "$work/stopped"
sed -n 's/^process 0 epoch 1 .* waiting for the others \([0-9.]*\) ms.*/\1/p' "$work/stopped" |
  awk '{ exit !($1 >= 10) }' || fail "process 0 did not wait >= 10 ms per step in epoch 1 while process 1 was stopped"
awk '/^process [01] epoch/ { step = 32000 / $6; for (i = 1; i <= NF; i++) if ($i == "ms,") sum += $(i - 1)
  sum += $(NF - 1); if ((sum - step) ^ 2 > (0.05 * step + 0.5) ^ 2) { print; bad = 1 }; sum = 0 } END { exit bad }' \
  "$work/stopped" || fail "an epoch line's phases do not add up to its step time"

"${bench[@]}" --samples 512 --epochs 2 --processes 2 > "$work/together" || fail "the --processes 2 run failed"
[ "$(grep -c '^RESULT model mnist_cnn images_per_sec' "$work/together")" = 2 ] || fail "not one result per process"
! grep -q "waiting for the others" "$work/together" || fail "processes not in lockstep said they waited"

code=0
"${bench[@]}" --samples 512 --epochs 2 --lockstep > /dev/null 2> "$work/err" || code=$?
[ "$code" = 2 ] && grep -q -- "--lockstep needs --processes 2 or more" "$work/err" || fail "--lockstep alone: exit $code, $(cat "$work/err")"

# One process killed mid-run: process 0 must not wait for it for ever (nor for its 60 s timeout), with two processes
# and with three (where the third, still alive, must not hide the death of the second).
wait_for_file_content() { for _ in $(seq 600); do grep -q "$1" "$work/out" && return 0; sleep 0.05; done; fail "no '$1' in 30 s"; }
for processes in 2 3; do
  "${bench[@]}" --samples 2048 --epochs 50 --processes "$processes" --lockstep > "$work/out" 2> "$work/err" &
  parent=$!
  wait_for_file_content "^process $((processes - 1)) epoch 0"
  children=$(pgrep -P "$parent")
  child=$(pgrep -n -P "$parent")
  kill -KILL "$child"
  start=$(date +%s)
  code=0
  wait "$parent" || code=$?
  elapsed=$(($(date +%s) - start))
  cat "$work/err"
  [ "$code" = 1 ] || fail "process 0 of $processes ended with $code, not 1, when another was killed"
  [ "$elapsed" -le 10 ] || fail "process 0 of $processes took $elapsed s to notice that another was killed"
  grep -qE "^train_compute_bench: process 0: lockstep (wait for|signal to) the other processes failed \(Broken pipe\)$" "$work/err" ||
    fail "no error naming the lockstep wait ($processes processes)"
  sleep 0.5
  for c in $children; do  # gone, or a zombie nobody reaped
    [ ! -e "/proc/$c" ] || grep -qE '^[0-9]+ \(.*\) Z' "/proc/$c/stat" || fail "process $c outlived process 0 ($processes processes)"
  done
done
echo PASSED
