#!/usr/bin/env bash
# A node whose output folder is not the shared one: --output-dir names a node-local path by mistake
# (/run/ddprun-cluster/local is each simulated node's own folder). Every rank stops at start-up with one line naming
# the ranks and the node that do not see rank 0's folder (exit 3), before any of them could resume from an old file
# of its own, here a checkpoint left on node2 only. With --resume-broadcast (rank 0 reads for every rank) the same
# folder is fine. Needs root. Usage: shared_folder.sh BIN_DIR SOURCE_DIR
set -euo pipefail
. "$(dirname "$0")/common.sh"
"$cluster" start --nodes 2 > /dev/null
local_dir=/run/ddprun-cluster/local/run
train=(ddptrain --model mnist_cnn --epochs 1 --train-limit 256 --test-limit 64 -b 16 --output-dir "$local_dir" --resume auto)

# An old run's checkpoint on node2's local disk only.
"$cluster" exec node2 "$bin/ddprun" --np 1 -- ddptrain --model mnist_cnn --epochs 1 --train-limit 64 --test-limit 64 \
  --output-dir "$local_dir" > "$work/old.out" 2>&1 || fail "the old run on node2 failed: $(cat "$work/old.out")"
"$cluster" exec node2 test -f "$local_dir/checkpoint.pth" || fail "no old checkpoint on node2"

start=$(date +%s.%N)
code=0
on_node1 -- "${train[@]}" > "$work/local.out" 2>&1 ||
  code=$?
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
[ "$code" -eq 3 ] || fail "exit code $code with a node-local --output-dir, expected 3: $(cat "$work/local.out")"
grep -q "^ddptrain: error.*--output-dir '$local_dir' is not the folder rank 0 writes to, on rank(s) 2, 3 (node2)" \
  "$work/local.out" || fail "no line naming ranks 2, 3 and node2: $(cat "$work/local.out")"
[ "$(grep -c 'is not the folder rank 0 writes to' "$work/local.out")" -eq 1 ] || fail "not one line: $(cat "$work/local.out")"
grep -q "resumed from\|continuing at" "$work/local.out" && fail "a rank resumed from a file: $(cat "$work/local.out")"
echo "node-local --output-dir: stopped at start-up with exit code 3 after ${elapsed} s, ranks 2, 3 on node2 named"

on_node1 -- "${train[@]}" --resume-broadcast \
  > "$work/broadcast.out" 2>&1 || fail "with --resume-broadcast the node-local folder failed: $(cat "$work/broadcast.out")"
echo "with --resume-broadcast (rank 0 reads for every rank) the same folder trains"
echo "PASSED"
