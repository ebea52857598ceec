#!/usr/bin/env bash
# A preemption signal while the ranks start: ddprun holds SIGUSR1/SIGUSR2 back until rank 0 reports that every
# rank catches them (before, a rank still loading its libraries was killed: exit 138 and no checkpoint when SIGUSR1
# came 0.1-0.5 s after the start). Sent at 0 s (ddprun started with SIGUSR1 pending, as from a parent that blocked
# it), 0.1 s and 0.3 s: every run ends preempted (75) with a checkpoint, and continues from it.
# A program that never reports (here a shell script) gets a held signal after --signal-hold seconds.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
small=(--epochs 1 --train-limit 2000 --test-limit 200 --threads 1)

for delay in 0 0.1 0.3; do
  out=$work/run$delay
  code=0
  start=$(date +%s.%N)
  if [ "$delay" = 0 ]; then
    /usr/bin/python3 - "$bin/ddprun" --np 2 -- ddptrain "${small[@]}" --output-dir "$out" > "$out.log" 2>&1 <<'PY' || code=$?
import os, signal, subprocess, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # the child starts with it blocked: it stays pending
child = subprocess.Popen(sys.argv[1:])                       # returns once ddprun is exec'd
os.kill(child.pid, signal.SIGUSR1)
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
PY
  else
    "$bin/ddprun" --np 2 -- ddptrain "${small[@]}" --output-dir "$out" > "$out.log" 2>&1 &
    pid=$!
    sleep "$delay"
    kill -USR1 "$pid"
    wait "$pid" || code=$?
  fi
  took=$(echo "$(date +%s.%N) - $start" | bc)
  cat "$out.log"
  [ "$code" -eq 75 ] || fail "SIGUSR1 at $delay s: exit code $code, expected 75 (preempted, checkpoint saved)"
  [ -f "$out/checkpoint.pth" ] || fail "SIGUSR1 at $delay s: no checkpoint.pth"
  held=no
  grep -q "^ddprun: SIGUSR1: held until the ranks catch it" "$out.log" && held=yes
  "$bin/ddprun" --np 2 -- ddptrain "${small[@]}" --output-dir "$out" --resume auto > "$out.resume.log" 2>&1 ||
    fail "SIGUSR1 at $delay s: the resume failed: $(cat "$out.resume.log")"
  # Where the preempted run stopped (the first step boundary after the ranks caught it), the resume continues.
  step=$(sed -n 's/.*every rank stopped after epoch 0 step \([0-9]*\);.*/\1/p' "$out.log")
  [ -n "$step" ] || fail "SIGUSR1 at $delay s: the run did not say where it stopped: $(cat "$out.log")"
  grep -q "resumed from $out/checkpoint.pth: continuing at epoch 0, step $step " "$out.resume.log" ||
    fail "SIGUSR1 at $delay s: the resume did not continue at step $step: $(cat "$out.resume.log")"
  echo "SIGUSR1 at $delay s: held: $held; preempted (75) after $took s, stopped after step $step; the resume" \
    "continued there"
done

# A rank program that never reports ready: the held signal is passed on after --signal-hold.
printf '#!/bin/sh\nsleep 30\n' > "$work/silent.sh"
chmod +x "$work/silent.sh"
"$bin/ddprun" --np 2 --signal-hold 1 -- "$work/silent.sh" > "$work/silent.log" 2>&1 &
pid=$!
sleep 0.1
start=$(date +%s.%N)
kill -USR1 "$pid"
code=0
wait "$pid" || code=$?
took=$(echo "$(date +%s.%N) - $start" | bc)
cat "$work/silent.log"
grep -q "^ddprun: SIGUSR1: passed on to the ranks (held for 1 s: no ready report from the ranks)" "$work/silent.log" ||
  fail "the held SIGUSR1 was not passed on after --signal-hold 1"
[ "$(echo "$took >= 0.8" | bc)" -eq 1 ] || fail "the signal was passed on after $took s, before --signal-hold 1"
echo "a program that never reports: SIGUSR1 passed on after $took s (--signal-hold 1), exit code $code"
echo "PASSED: SIGUSR1 during start-up preempts cleanly at 0, 0.1 and 0.3 s"
