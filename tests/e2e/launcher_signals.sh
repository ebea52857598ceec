#!/usr/bin/env bash
# Signals to ddprun reach every rank: SIGUSR1 and SIGUSR2 as they are (mpirun forwards them), SIGTERM, SIGINT and
# SIGHUP as the end of the job (mpirun terminates the ranks); after a signal ddprun does not restart the job, even
# with --max-restarts, and exits with the job's code. The ranks are a Python script that writes down what it gets.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
cat > "$work/rank.py" <<'RANK'
#!/usr/bin/python3
# Writes each signal it gets to $1/rank<N> and goes on, so that mpirun's SIGKILL ends it. That is how mpirun (Open
# MPI 4.1) ends a job on SIGTERM, SIGINT or SIGHUP: SIGCONT to every rank, a second later SIGTERM, and SIGKILL a
# second after that or as soon as the first rank exits, whichever comes first. A rank that exits on SIGTERM would
# have the other killed within milliseconds, often before it could write. Python runs a handler at once, in the
# middle of its sleep (a shell runs a trap only once the command it waits for is done).
import os, signal, socket, sys, time

out = open(f"{sys.argv[1]}/rank{os.environ['OMPI_COMM_WORLD_RANK']}", "a", buffering=1)


times = open(f"{sys.argv[1]}/times{os.environ['OMPI_COMM_WORLD_RANK']}", "a", buffering=1)


def note(number, frame):
    name = signal.Signals(number).name[3:]
    out.write(name + "\n")
    times.write(f"{name} {time.time():.3f}\n")


for number in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, note)
# Tell ddprun that this rank catches its preemption signals (ddptrain and libddprun do this through the same
# socket), so that it stops holding SIGUSR1/SIGUSR2 back.
if "DDPRUN_READY_SOCKET" in os.environ:
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(
        b"ready", "\0" + os.environ["DDPRUN_READY_SOCKET"][1:])
out.write(f"started {os.environ['DDPRUN_RESTART_COUNT']}\n")
while True:  # until mpirun's SIGKILL (ctest's timeout otherwise)
    time.sleep(1)
RANK
chmod +x "$work/rank.py"

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
  "$bin/ddprun" --np 2 --max-restarts 2 -- "$work/rank.py" "$dir" > "$dir.out" 2>&1 &
  pid=$!
  wait_for "$dir" "started 0"
  kill -USR1 "$pid"
  wait_for "$dir" USR1
  kill -USR2 "$pid"
  wait_for "$dir" USR2
  sent=$(date +%s.%N)
  kill "-$last" "$pid"
  code=0
  wait "$pid" || code=$?
  ended=$(date +%s.%N)
  # mpirun answers SIGINT and SIGHUP by terminating the ranks: they see SIGTERM (or the signal itself).
  for r in 0 1; do
    tail -n 1 "$dir/rank$r" | grep -qxE "TERM|$last" || fail "SIG$last: rank $r did not get it: $(cat "$dir/rank$r")"
  done
  grep -q "^ddprun: SIG$last: passed on to the ranks" "$dir.out" || fail "SIG$last: not reported: $(cat "$dir.out")"
  grep -q "^ddprun: the job ended after SIG$last: exit code $code" "$dir.out" ||
    fail "SIG$last: no final line with the exit code $code: $(cat "$dir.out")"
  ! grep -q "restart" "$dir.out" || fail "SIG$last: ddprun restarted a job it was asked to stop: $(cat "$dir.out")"
  [ "$(grep -c started "$dir/rank0")" -eq 1 ] || fail "SIG$last: the job was started again"
  read -r got at < <(tail -n 1 "$dir/times0")
  echo "SIG$last: every rank got USR1, USR2 and the end; ddprun exited with $code. Rank 0 got SIG$got" \
    "$(echo "$at - $sent" | bc) s after ddprun got SIG$last; the job ended $(echo "$ended - $at" | bc) s after that"
done
echo "PASSED: USR1, USR2, TERM, INT and HUP reach every rank through ddprun; no restart after a signal"
