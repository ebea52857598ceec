#!/usr/bin/env bash
# ddprun returns only when every process of the job is gone, however many signals arrive. mpirun exits at once on a
# second signal (SIGTERM, then SIGINT 20 ms later; or Ctrl-C twice) and leaves its ranks running; ddprun is their
# subreaper, so they become its children, and it ends them (SIGTERM, SIGKILL 1 s later) before it returns.
#   1. Ranks that ignore SIGTERM and SIGINT: after ddprun returns, none is alive, and ddprun said it needed SIGKILL.
#   2. ddptrain writing a checkpoint at every step: after ddprun returns, no rank is alive and no file in the output
#      folder changes any more (before, the orphaned ranks renamed a new checkpoint.pth 1-3 s after ddprun exited).
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"

# stop_twice PID: SIGTERM, then SIGINT 20 ms later, to ddprun; waits for it; sets $code and $took (seconds).
stop_twice() {
  local sent
  sent=$(date +%s.%N)
  kill -TERM "$1"
  sleep 0.02
  kill -INT "$1"
  code=0
  wait "$1" || code=$?
  took=$(echo "$(date +%s.%N) - $sent" | bc)
}

# 1. Stubborn ranks.
cat > "$work/stubborn.py" <<'RANK'
#!/usr/bin/python3
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
open(f"{sys.argv[1]}/started{os.environ['OMPI_COMM_WORLD_RANK']}", "w").close()
while True:
    time.sleep(1)
RANK
chmod +x "$work/stubborn.py"
"$bin/ddprun" --np 2 -- "$work/stubborn.py" "$work" > "$work/stubborn.out" 2>&1 &
pid=$!
wait_for_file "$work/started0" "rank 0"
wait_for_file "$work/started1" "rank 1"
stop_twice "$pid"
cat "$work/stubborn.out"
left=$(pgrep -f "$work/stubborn.py" || true)
[ -z "$left" ] || { kill -9 $left; fail "ranks $left outlived ddprun"; }
grep -q "^ddprun: 2 process(es) of the job outlived mpirun; ended them with SIGTERM, then SIGKILL after 1 s" \
  "$work/stubborn.out" || fail "ddprun did not say how it ended the ranks that outlived mpirun"
grep -q "^ddprun: the job ended after SIGINT: .*; every process of it was gone [0-9.]* s after the first signal" \
  "$work/stubborn.out" || fail "ddprun did not say when the last process was gone"
[ "$code" -ne 0 ] || fail "ddprun exited 0 after being stopped"
echo "stubborn ranks: ddprun returned $took s after SIGTERM+SIGINT, exit code $code, no rank left"

# 2. ddptrain, in the middle of a checkpoint write.
out=$work/train
mkdir "$out"
"$bin/ddprun" --np 2 -- ddptrain --model mlp --epochs 2 --train-limit 2000 --test-limit 200 --threads 1 \
  --save-every-steps 1 --output-dir "$out" > "$work/train.out" 2>&1 &
pid=$!
for _ in $(seq 1200); do
  compgen -G "$out/checkpoint.pth.tmp.*" > /dev/null && break
  sleep 0.025
done
compgen -G "$out/checkpoint.pth.tmp.*" > /dev/null || fail "no checkpoint was being written after 30 s"
stop_twice "$pid"
left=$(pgrep -f "ddptrain --model mlp .*--output-dir $out" || true)
[ -z "$left" ] || { kill -9 $left; fail "ranks $left outlived ddprun: $(cat "$work/train.out")"; }
before=$(ls -l --time-style=+%s.%N "$out")
sleep 2
after=$(ls -l --time-style=+%s.%N "$out")
[ "$before" = "$after" ] || fail "the output folder changed after ddprun returned: $before --- $after"
grep -q "^ddprun: the job ended after SIGINT: .*every process of it was gone" "$work/train.out" ||
  fail "ddprun did not say when the last process was gone: $(cat "$work/train.out")"
echo "ddptrain mid-write: ddprun returned $took s after SIGTERM+SIGINT (exit code $code); no rank left, the folder" \
  "unchanged 2 s later"
echo "PASSED: no process of the job outlives ddprun"
