#!/usr/bin/env bash
# A checkpoint write cut short leaves a partial temporary file (checkpoint.pth.tmp.<host>.<pid>, 12-142 MB here),
# which used to stay forever, through every later --resume auto and restart. Now the next start removes the ones
# whose writer is gone, says so, and resumes from the last complete checkpoint.
#   kill -9 of rank 0 while it writes (mlp: 160 MB checkpoints at every step), --max-restarts 1: the restart removes
#   the partial file and the job finishes with no temporary file left.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
# The kill must land while the file is being written; on a fast disk (or a tmpfs) the write may be over first, so a
# few attempts are allowed.
for attempt in 1 2 3 4 5; do
  out=$work/run$attempt
  mkdir "$out"
  "$bin/ddprun" --np 2 --max-restarts 1 --restart-delay 0 -- ddptrain --model mlp --epochs 1 --train-limit 1024 \
    --test-limit 64 --threads 1 --save-every-steps 1 --output-dir "$out" > "$work/run.log" 2>&1 &
  pid=$!
  for _ in $(seq 2400); do
    compgen -G "$out/checkpoint.pth.tmp.*" > /dev/null && break
    sleep 0.025
  done
  partial=$(compgen -G "$out/checkpoint.pth.tmp.*" | head -n 1 || true)
  [ -n "$partial" ] || fail "no checkpoint was being written after 60 s: $(cat "$work/run.log")"
  kill -9 "$(rank_pid "ddptrain --model mlp .*--output-dir $out" 0)"
  code=0
  wait "$pid" || code=$?
  [ "$code" -eq 0 ] || fail "the restarted job exited with $code: $(cat "$work/run.log")"
  grep -q "^ddptrain: removed $partial (.* MB), a checkpoint write whose writer is gone (killed mid-write)" \
    "$work/run.log" && break
  echo "attempt $attempt: the write was over before the kill landed; again"
  [ "$attempt" -lt 5 ] || fail "the restart never removed a partial file: $(cat "$work/run.log")"
done
grep -E "^ddprun|removed|resumed" "$work/run.log" || true
left=$(compgen -G "$out/*.tmp.*" || true)
[ -z "$left" ] || fail "temporary files left: $left"
echo "PASSED: the partial file of a killed writer was removed by the restart ($(basename "$partial"))"
