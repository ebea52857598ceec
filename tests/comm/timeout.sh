#!/usr/bin/env bash
# A rank that never joins a collective makes the others abort the whole job within the timeout, with one line that
# names the collective, its tensor and the missing rank (and the ranks that did join). Usage: timeout.sh BIN RANKS
set -euo pipefail
bin=$1
ranks=$2
. "$(dirname "$0")/../e2e/common.sh"
start=$(date +%s)
set +e
timeout 100 mpirun --oversubscribe --bind-to none -np "$ranks" "$bin/comm_timeout" 2 > "$work/out" 2>&1
rc=$?
set -e
elapsed=$(($(date +%s) - start))
cat "$work/out"
[ "$rc" -ne 0 ] || fail "the job exited 0"
[ "$rc" -ne 124 ] || fail "the job hung until timeout(1) killed it"
[ "$elapsed" -lt 30 ] || fail "the job took ${elapsed} s to end after a 2 s timeout"
last=$((ranks - 1))
# Every rank that joined times out; the first to abort ends the job, so the line may come from any of them.
line=$(grep -m1 -E "^ddprun comm: rank [0-9]+ of $ranks: allreduce #2 \(sum; float32\[1024\]\) did not complete within 2 s" "$work/out") ||
  fail "no timeout line from a rank that joined"
[[ "$line" == *"waiting on rank $last (last at barrier #1, completed), which never joined it"* ]] ||
  fail "the missing rank is not named: $line"
if [ "$ranks" -gt 2 ]; then
  [[ "$line" == *"; rank(s) "*" joined it"* ]] || fail "the ranks that joined are not named: $line"
fi
[[ "$line" == *"; aborting the job" ]] || fail "no word of the abort: $line"
echo "PASSED in ${elapsed} s"
