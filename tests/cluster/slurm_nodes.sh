#!/usr/bin/env bash
# Slurm across simulated nodes: one slurmd per node (scripts/slurm/local-cluster.sh --simulated-nodes), and
# scripts/slurm/multi-node.sbatch submitted with --nodes=2 --ntasks-per-node=2, so that srun --mpi=pmix places 2 ranks
# on each node. Preempted with scancel --signal=USR1 --batch once a checkpoint exists: every rank on both nodes stops
# at the same step, rank 0 saves, ddprun requeues the job, Slurm starts it again, it resumes and ends bit-identical to
# an uninterrupted 4-rank run. Needs root. Usage: slurm_nodes.sh BIN_DIR SOURCE_DIR
set -euo pipefail
. "$(dirname "$0")/common.sh"
chmod 755 "$work"  # munged runs as the munge user, in a folder under it
slurm=$work/slurm
trap '"$source_dir/scripts/slurm/local-cluster.sh" stop "$slurm" > /dev/null 2>&1; "$cluster" stop > /dev/null; rm -rf "$work"' EXIT
"$cluster" start --nodes 2 --link-rate 1gbit > /dev/null
"$source_dir/scripts/slurm/local-cluster.sh" start "$slurm" --simulated-nodes
slurm_client=("$cluster" exec node1 env SLURM_CONF="$slurm/slurm.conf")  # Slurm's clients run on node1
. "$source_dir/tests/slurm/jobs.sh"
on() { "${slurm_client[@]}" "$@"; }
train=(--model mnist_cnn -b 32 --train-limit 4096 --test-limit 64 --threads 1 --epochs 2 --lr-step-size 1)

on "$bin/ddprun" --np 4 -- ddptrain "${train[@]}" --output-dir "$work/ref" > "$work/ref.out" 2>&1 ||
  fail "the reference run failed: $(cat "$work/ref.out")"

dir=$work/job
mkdir -p "$dir"
job=$(on sbatch --parsable --nodes=2 --ntasks-per-node=2 --cpus-per-task=1 --output="$dir/job.out" \
  --export=ALL,DDPRUN="$bin/ddprun",OUTPUT_DIR="$dir/run" "$source_dir/scripts/slurm/multi-node.sbatch" "${train[@]}" \
  --save-every-steps 1)
for _ in $(seq 900); do [ -f "$dir/run/checkpoint.pth" ] && break; sleep 0.1; done
[ -f "$dir/run/checkpoint.pth" ] || fail "no checkpoint after 90 s (job $job: $(job_state "$job"), reason $(job_reason "$job")): $(cat "$dir/job.out" 2>&1); $(on scontrol show job "$job")"
start=$(date +%s.%N)
on scancel --signal=USR1 --batch "$job"
wait_for_job_end "$job" 240
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
log=$(cat "$dir/job.out")
[ "$state" = COMPLETED ] || fail "job $job ended $state: $log"
on scontrol show job "$job" | grep -q "Restarts=1 " || fail "job $job was not requeued once: $(on scontrol show job "$job")"
expect() { grep -q -- "$1" <<< "$log" || fail "no '$1' in the job's log: $log"; }
expect "batch: job $job on node\[1-2\]"
expect "ddprun: 4 ranks.* x 2 nodes on 2 hosts (the Slurm allocation), started with srun"
expect "ddptrain: 4 rank(s)"
expect "ddptrain: preempted by SIGUSR1: every rank stopped after epoch 0 step [0-9]*; checkpoint saved in $dir/run"
expect "ddprun: preempted: the ranks saved a checkpoint and stopped; requeued Slurm job $job (scontrol requeue)"
expect "Slurm job $job, SLURM_RESTART_COUNT=1 (requeued 1 time(s))"
expect "ddptrain: resumed from $dir/run/checkpoint.pth: continuing at epoch 0, step [1-9]"
expect "batch: ddprun exited with 0"
/usr/bin/python3 "$source_dir/tests/e2e/same_state.py" "$work/ref/checkpoint.pth" "$dir/run/checkpoint.pth" ||
  fail "preempted, requeued and resumed across 2 nodes: not bit-identical to the uninterrupted run"
echo "multi-node.sbatch on 2 nodes x 2 ranks: preempted, requeued (job $job, Restarts=1), resumed and finished bit-identical, ${elapsed} s from the signal to the end"
echo "PASSED"
