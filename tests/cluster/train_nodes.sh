#!/usr/bin/env bash
# Training across simulated nodes (scripts/cluster/cluster.sh: network namespaces with their own hostnames, links
# shaped to 1 Gbit/s): ddprun on node1 starts 2 ranks on node1 and 2 on node2 through mpirun's own remote start-up
# (--rsh-agent scripts/cluster/rsh-agent.sh, standing in for ssh). Checks that each rank's host, rank, local rank and
# local size are right, that rank 0's node writes the checkpoint and metrics into the shared folder, and
# that 2 nodes x 2 ranks end with the weights of 1 node x 4 ranks, bit for bit (same global batch, same data order).
# Needs root. Usage: train_nodes.sh BIN_DIR SOURCE_DIR
set -euo pipefail
. "$(dirname "$0")/common.sh"
"$cluster" start --nodes 2 --link-rate 1gbit

# Placement, as the ranks see it from mpirun's environment.
on_node1 -- /bin/sh -c \
  'echo "rank $OMPI_COMM_WORLD_RANK on $(hostname): local rank $OMPI_COMM_WORLD_LOCAL_RANK of $OMPI_COMM_WORLD_LOCAL_SIZE"' \
  > "$work/placement.out" 2>&1 || fail "ddprun across 2 nodes failed: $(cat "$work/placement.out")"
for expected in "rank 0 on node1: local rank 0 of 2" "rank 1 on node1: local rank 1 of 2" \
  "rank 2 on node2: local rank 0 of 2" "rank 3 on node2: local rank 1 of 2"; do
  grep -qx "$expected" "$work/placement.out" || fail "no line '$expected': $(cat "$work/placement.out")"
done
echo "placement: $(grep -c '^rank' "$work/placement.out") ranks, each on its node with the right local rank"

# Ranks of different nodes talk over TCP, as on a cluster: without Open MPI's tcp transport they cannot reach each
# other (only its shared-memory one, which Open MPI uses within a node).
"$cluster" exec node1 "$bin/ddprun" -H node1:1,node2:1 --rsh-agent "$agent" -x OMPI_MCA_btl=self,vader -- \
  ddptrain --epochs 1 --train-limit 64 --test-limit 64 --output-dir "$work/no_tcp" > "$work/no_tcp.out" 2>&1 &&
  fail "ranks on two nodes trained without TCP: the nodes share more than a real cluster's do"
grep -q "be able to reach" "$work/no_tcp.out" || fail "without TCP, not Open MPI's unreachable error: $(cat "$work/no_tcp.out")"
echo "without TCP the nodes cannot reach each other: the ranks of different nodes talk over the simulated network"

train=(ddptrain --model mnist_cnn --epochs 2 --train-limit 2048 --test-limit 512 -b 16 --lr 0.05 --seed 3)
start=$(date +%s.%N)
on_node1 -- "${train[@]}" \
  --output-dir "$work/two_nodes" > "$work/two_nodes.out" 2>&1 || fail "2 nodes x 2 ranks failed: $(cat "$work/two_nodes.out")"
two_seconds=$(echo "$(date +%s.%N) - $start" | bc)
grep -q "ddptrain: 4 rank(s)" "$work/two_nodes.out" || fail "not 4 ranks: $(cat "$work/two_nodes.out")"
for f in checkpoint.pth model_0.pth model_1.pth metrics.jsonl; do
  [ -f "$work/two_nodes/$f" ] || fail "no $f in the shared output folder"
done
grep -q '"world_size": 4' "$work/two_nodes/metrics.jsonl" || fail "metrics.jsonl does not say world size 4"
start=$(date +%s.%N)
"$cluster" exec node1 "$bin/ddprun" --np 4 -- "${train[@]}" --output-dir "$work/one_node" > "$work/one_node.out" 2>&1 ||
  fail "1 node x 4 ranks failed: $(cat "$work/one_node.out")"
one_seconds=$(echo "$(date +%s.%N) - $start" | bc)
/usr/bin/python3 "$source_dir/tests/e2e/same_state.py" "$work/one_node/checkpoint.pth" "$work/two_nodes/checkpoint.pth" ||
  fail "2 nodes x 2 ranks did not end with the weights of 1 node x 4 ranks"
echo "2 nodes x 2 ranks (${two_seconds} s) and 1 node x 4 ranks (${one_seconds} s): the same model, optimizer and schedule, bit for bit"
echo "PASSED"
