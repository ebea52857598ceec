#!/usr/bin/env bash
# ddprun's decisions after the job ends, with small shell programs as ranks: a failing job is started again with
# --resume auto in place of its --resume (the ranks see DDPRUN_RESTART_COUNT) up to --max-restarts times, then ddprun
# gives up with every exit code; a signal during the restart delay stops it (SIGTERM: not restarted; SIGUSR1:
# preempted, 75); ranks that exit 75 under Slurm make ddprun run 'scontrol requeue' with the job's id (an array
# task's id for array jobs), unless --no-requeue (a stand-in scontrol records the call).
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
cat > "$work/fail.sh" <<'RANK'
#!/bin/sh
# Records its restart count and arguments (rank 0), then exits with $EXIT_CODE.
[ "$OMPI_COMM_WORLD_RANK" = 0 ] && echo "$DDPRUN_RESTART_COUNT $*" >> "$LOG"
exit "$EXIT_CODE"
RANK
chmod +x "$work/fail.sh"

code=0
LOG=$work/runs EXIT_CODE=1 "$bin/ddprun" --np 2 --max-restarts 2 --restart-delay 0 -- "$work/fail.sh" --lr 1 --resume x \
  > "$work/give_up.out" 2>&1 || code=$?
[ "$code" -eq 1 ] || fail "exit code $code after the last restart failed, expected 1"
printf '0 --lr 1 --resume x\n1 --lr 1 --resume auto\n2 --lr 1 --resume auto\n' | diff - "$work/runs" ||
  fail "the runs were not started with these arguments and restart counts"
grep -q "^ddprun: the job failed: exit code 1 (a failure); restart 1 of 2 in 0 s, with --resume auto" "$work/give_up.out" ||
  fail "no restart line: $(cat "$work/give_up.out")"
grep -q "^ddprun: the job failed: exit code 1 (a failure); no restarts left (--max-restarts 2; exit codes 1, 1, 1)" \
  "$work/give_up.out" || fail "no final line: $(cat "$work/give_up.out")"

for signal in TERM USR1; do  # during a long restart delay
  : > "$work/runs"
  LOG=$work/runs EXIT_CODE=1 "$bin/ddprun" --np 2 --max-restarts 1 --restart-delay 30 -- "$work/fail.sh" \
    > "$work/delay.out" 2>&1 &
  pid=$!
  for _ in $(seq 1200); do grep -q "restart 1 of 1 in 30 s" "$work/delay.out" && break; sleep 0.05; done
  grep -q "restart 1 of 1 in 30 s" "$work/delay.out" || fail "no restart delay after 60 s: $(cat "$work/delay.out")"
  kill "-$signal" "$pid"
  code=0
  wait "$pid" || code=$?
  want=$([ "$signal" = TERM ] && echo 143 || echo 75)
  [ "$code" -eq "$want" ] || fail "SIG$signal in the restart delay: exit code $code, expected $want: $(cat "$work/delay.out")"
  grep -q "^ddprun: SIG$signal before the restart: not restarting" "$work/delay.out" ||
    fail "SIG$signal in the restart delay: $(cat "$work/delay.out")"
  [ "$(wc -l < "$work/runs")" -eq 1 ] || fail "SIG$signal in the restart delay: the job was started again"
done

# Preempted ranks (exit code 75) under Slurm: ddprun requeues the job through scontrol, once, and exits 75.
mkdir -p "$work/path"
cat > "$work/path/scontrol" <<'SCONTROL'
#!/bin/sh
echo "$*" >> "$SCONTROL_LOG"
SCONTROL
chmod +x "$work/path/scontrol"
for ids in "SLURM_JOB_ID=41|requeue 41" "SLURM_JOB_ID=41 SLURM_ARRAY_JOB_ID=40 SLURM_ARRAY_TASK_ID=3|requeue 40_3"; do
  rm -f "$work/scontrol.log"
  code=0
  env ${ids%%|*} PATH="$work/path:$PATH" SCONTROL_LOG=$work/scontrol.log LOG=/dev/null EXIT_CODE=75 \
    "$bin/ddprun" --np 2 --max-restarts 2 -- "$work/fail.sh" > "$work/requeue.out" 2>&1 || code=$?
  [ "$code" -eq 75 ] || fail "exit code $code after a preemption, expected 75"
  [ "$(cat "$work/scontrol.log")" = "${ids#*|}" ] || fail "scontrol was called with '$(cat "$work/scontrol.log")', expected '${ids#*|}'"
  grep -q "requeued Slurm job ${ids#*requeue }" "$work/requeue.out" || fail "no requeue line: $(cat "$work/requeue.out")"
done
rm -f "$work/scontrol.log"
SLURM_JOB_ID=41 PATH="$work/path:$PATH" SCONTROL_LOG=$work/scontrol.log LOG=/dev/null EXIT_CODE=75 \
  "$bin/ddprun" --np 2 --no-requeue -- "$work/fail.sh" > /dev/null 2>&1 || true
[ ! -e "$work/scontrol.log" ] || fail "--no-requeue ran scontrol"
echo "PASSED: restarts with --resume auto up to --max-restarts, then the exit codes; signals in the delay; Slurm requeue"
