#!/usr/bin/env bash
# Rank 0's live progress line appears when the output reaches a terminal and
# stays out of files and pipes, where logs must hold only the per-epoch lines.
# (A pseudo-terminal from Python's pty module stands in for the user's terminal.)
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
unset DDPRUN_PROGRESS
train="ddptrain --epochs 1 --train-limit 640 --test-limit 64 --threads 1 --output-dir $work"

# Python's pty.spawn runs the command on a pseudo-terminal and copies what it prints.
/usr/bin/python3 -c 'import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)' "$bin/ddprun" --np 2 -- $train \
  < /dev/null > "$work/terminal.log"
grep -q 'epoch 0 \[5/5\]' "$work/terminal.log" || fail "no progress line on a terminal: $(cat "$work/terminal.log")"
grep -q 'epoch 0/0  train_loss' "$work/terminal.log" || fail "no epoch line on a terminal"

# A single ddptrain started without a launcher looks at its own stdout.
/usr/bin/python3 -c 'import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)' $bin/$train < /dev/null > "$work/alone.log"
grep -q 'epoch 0 \[10/10\]' "$work/alone.log" || fail "no progress line from ddptrain alone on a terminal"

"$bin/ddprun" --np 2 -- $train > "$work/pipe.log"
grep -q $'\r' "$work/pipe.log" && fail "progress line written to a pipe"
grep -q '^epoch 0/0 ' "$work/pipe.log" || fail "no epoch line in the pipe"
echo "PASSED"
