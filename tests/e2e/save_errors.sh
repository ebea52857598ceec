#!/usr/bin/env bash
# Checkpoint writing and reading options on 2 ranks: a checkpoint that cannot be written stops the job with one line
# naming the path (--on-save-error stop, also when the write was in the background with --async-save), or is a
# warning while training goes on (--on-save-error continue); --resume-broadcast and --map-location resume to the
# same state as a plain --resume (and fail with the same line on a missing file or a folder); a malformed
# --map-location is a usage error.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
here=$(dirname "$0")
common=(--model mnist_cnn -b 32 --train-limit 128 --test-limit 64 --threads 1)
run() {  # run FOLDER FLAGS...
  local dir=$1
  shift
  mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --output-dir "$dir" "$@"
}
expect_exit() {  # expect_exit CODE LOG FLAGS...
  local want=$1 log=$2 code=0
  shift 2
  run "$@" > "$log" 2>&1 || code=$?
  [ "$code" -eq "$want" ] || fail "exit code $code, expected $want: $(cat "$log")"
}

# checkpoint.pth cannot be replaced: a non-empty folder stands in its place (root ignores permissions).
blocked() { mkdir -p "$1/checkpoint.pth/x"; }

blocked "$work/stop"
expect_exit 1 "$work/stop.log" "$work/stop" --epochs 2
grep -q "cannot write checkpoint '$work/stop/checkpoint.pth': cannot rename .* Is a directory; the previous checkpoint is intact" "$work/stop.log" ||
  fail "no clear error for a failed save: $(cat "$work/stop.log")"
grep -q "^epoch 1/1" "$work/stop.log" && fail "the job trained on after a failed save"

blocked "$work/async"
expect_exit 1 "$work/async.log" "$work/async" --epochs 1 --async-save
grep -q "cannot write checkpoint '$work/async/checkpoint.pth'" "$work/async.log" ||
  fail "--async-save: the background write's error was not reported: $(cat "$work/async.log")"

blocked "$work/continue"
expect_exit 0 "$work/continue.log" "$work/continue" --epochs 2 --on-save-error continue
[ "$(grep -c "warning: cannot write checkpoint '$work/continue/checkpoint.pth'.*training continues" "$work/continue.log")" -eq 2 ] ||
  fail "expected one warning per epoch: $(cat "$work/continue.log")"
grep -q "^epoch 1/1" "$work/continue.log" || fail "--on-save-error continue did not train to the end"
[ -f "$work/continue/model_1.pth" ] || fail "model_1.pth was not written"

# --on-save-error continue where no file can be written at all: the run trains to the end but cannot be resumed, so
# it does not exit 0 (it did, saying "the previous one is intact" with nothing on disk).
for f in checkpoint.pth model_0.pth model_1.pth; do mkdir -p "$work/never/$f/x"; done
expect_exit 1 "$work/never.log" "$work/never" --epochs 2 --on-save-error continue
grep -q "training continues without this checkpoint (OnSaveError::Warn); there is no checkpoint yet" \
  "$work/never.log" || fail "the warning claims a previous checkpoint: $(cat "$work/never.log")"
grep -q "no checkpoint could be written in this run (see the warnings above): there is none on disk" \
  "$work/never.log" || fail "no final error for a run without any checkpoint: $(cat "$work/never.log")"

# Reading: plain, broadcast by rank 0, and with a map_location, all reach the same state.
run "$work/base" --epochs 1 --save-every-steps 1 --stop-after-steps 1 > /dev/null
for way in plain broadcast mapped; do
  cp -r "$work/base" "$work/$way"
  case $way in
    plain) flags=() ;;
    broadcast) flags=(--resume-broadcast) ;;
    mapped) flags=(--map-location cpu=cpu,cuda:1=cpu) ;;
  esac
  run "$work/$way" --epochs 1 --resume "$work/$way/checkpoint.pth" "${flags[@]}" > "$work/$way.log" 2>&1 ||
    fail "--resume with ${flags[*]:-no flag} failed: $(cat "$work/$way.log")"
done
/usr/bin/python3 "$here/same_state.py" "$work/plain/checkpoint.pth" "$work/broadcast/checkpoint.pth" ||
  fail "--resume-broadcast reached another state"
grep -q "resumed from $work/mapped/checkpoint.pth: .* (map_location: cpu=cpu, cuda:1=cpu, others to cpu)" \
  "$work/mapped.log" || fail "the resume line does not say the map_location: $(cat "$work/mapped.log")"
/usr/bin/python3 "$here/same_state.py" "$work/plain/checkpoint.pth" "$work/mapped/checkpoint.pth" ||
  fail "--map-location reached another state"
for bad in "$work/missing.pth" "$work/base"; do  # a missing file, a folder: the same line as without broadcasting
  expect_exit 3 "$work/badcast.log" "$work/badcast" --resume "$bad" --resume-broadcast
  grep -qE "error: cannot read checkpoint '$bad': (No such file or directory|Is a directory)$" "$work/badcast.log" ||
    fail "--resume-broadcast of $bad: no clear error: $(cat "$work/badcast.log")"
done
expect_exit 2 "$work/badmap.log" "$work/badmap" --map-location cuda:1
grep -q "map-location: map_location entry 'cuda:1' is not FROM=TO (like cuda:1=cuda:0)" "$work/badmap.log" ||
  fail "no clear usage error: $(cat "$work/badmap.log")"
echo "PASSED: failed saves stop the job (also in the background) or warn; broadcast and mapped resumes match"
