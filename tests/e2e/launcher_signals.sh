#!/usr/bin/env bash
# Signals to ddprun reach every rank: SIGUSR1 and SIGUSR2 as they are (mpirun forwards them), SIGTERM, SIGINT and
# SIGHUP as the end of the job (mpirun terminates the ranks); after a signal ddprun does not restart the job, even
# with --max-restarts, and exits with the job's code. The ranks are a shell script that writes down what it gets.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
cat > "$work/rank.sh" <<'RANK'
#!/bin/sh
# Writes each signal it gets to $1/rank<N>; USR1/USR2 are noted and it goes on, the others end it.
out=$1/rank$OMPI_COMM_WORLD_RANK
for s in USR1 USR2 TERM INT HUP; do
  trap "echo $s >> $out; case $s in USR*) ;; *) exit 0 ;; esac" "$s"
done
echo "started $DDPRUN_RESTART_COUNT" >> "$out"
while :; do sleep 0.05; done  # until TERM, INT or HUP ends it (ctest's timeout otherwise)
RANK
chmod +x "$work/rank.sh"

wait_for() {  # wait_for FILE PATTERN: until every rank's file has the line
  for _ in $(seq 400); do
    grep -qx "$2" "$1/rank0" 2> /dev/null && grep -qx "$2" "$1/rank1" 2> /dev/null && return 0
    sleep 0.05
  done
  fail "the ranks never wrote '$2': $(cat "$1"/rank* 2> /dev/null)"
}

for last in TERM INT HUP; do
  dir="$work/$last"
  mkdir -p "$dir"
  "$bin/ddprun" --np 2 --max-restarts 2 -- "$work/rank.sh" "$dir" > "$dir.out" 2>&1 &
  pid=$!
  wait_for "$dir" "started 0"
  kill -USR1 "$pid"
  wait_for "$dir" USR1
  kill -USR2 "$pid"
  wait_for "$dir" USR2
  kill "-$last" "$pid"
  code=0
  wait "$pid" || code=$?
  # mpirun answers SIGINT and SIGHUP by terminating the ranks: they see SIGTERM (or the signal itself).
  for r in 0 1; do
    tail -n 1 "$dir/rank$r" | grep -qxE "TERM|$last" || fail "SIG$last: rank $r did not get it: $(cat "$dir/rank$r")"
  done
  grep -q "^ddprun: SIG$last: passed on to the ranks" "$dir.out" || fail "SIG$last: not reported: $(cat "$dir.out")"
  grep -q "^ddprun: the job ended after SIG$last: exit code $code" "$dir.out" ||
    fail "SIG$last: no final line with the exit code $code: $(cat "$dir.out")"
  ! grep -q "restart" "$dir.out" || fail "SIG$last: ddprun restarted a job it was asked to stop: $(cat "$dir.out")"
  [ "$(grep -c started "$dir/rank0")" -eq 1 ] || fail "SIG$last: the job was started again"
  echo "SIG$last: every rank got USR1, USR2 and the end; ddprun exited with $code"
done
echo "PASSED: USR1, USR2, TERM, INT and HUP reach every rank through ddprun; no restart after a signal"
