#!/usr/bin/env bash
# Rank 0's live progress line appears when the output reaches a terminal and
# stays out of files and pipes, where logs must hold only the per-epoch lines.
# (A pseudo-terminal from Python's pty module stands in for the user's terminal.)
set -euo pipefail
bin=$1
out=$(mktemp -d /tmp/ddprun_progress.XXXXXX)
trap 'rm -rf "$out"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset DDPRUN_PROGRESS
fail() { echo "FAILED: $*" >&2; exit 1; }
train="ddptrain --epochs 1 --train-limit 640 --test-limit 64 --threads 1 --output-dir $out"

# Python's pty.spawn runs the command on a pseudo-terminal and copies what it prints.
/usr/bin/python3 -c 'import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)' "$bin/ddprun" --np 2 -- $train \
  < /dev/null > "$out/terminal.log"
grep -q 'epoch 0 \[5/5\]' "$out/terminal.log" || fail "no progress line on a terminal: $(cat "$out/terminal.log")"
grep -q 'epoch 0/0  train_loss' "$out/terminal.log" || fail "no epoch line on a terminal"

"$bin/ddprun" --np 2 -- $train > "$out/pipe.log"
grep -q $'\r' "$out/pipe.log" && fail "progress line written to a pipe"
grep -q '^epoch 0/0 ' "$out/pipe.log" || fail "no epoch line in the pipe"
echo "PASSED"
