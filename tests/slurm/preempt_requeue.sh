#!/usr/bin/env bash
# The Slurm templates on a real (one-node) Slurm cluster: each is submitted with a short training job (2 ranks,
# mnist_cnn with dropout), preempted with scancel --signal=USR1 --batch once it has saved a checkpoint; the batch
# script passes the signal to ddprun, the ranks save and exit 75, ddprun requeues the job, Slurm starts it again
# (SLURM_RESTART_COUNT=1), it resumes where it stopped, finishes, and ends bit-identical to a run never preempted.
# multi-node.sbatch runs on the one node here (--nodes=1) and starts its ranks with srun --mpi=pmix.
#   preempt_requeue.sh BIN_DIR CLUSTER_DIR      (the cluster: scripts/slurm/local-cluster.sh start CLUSTER_DIR)
set -euo pipefail
bin=$(cd "$1" && pwd)
cluster=$2
. "$(dirname "$0")/../e2e/common.sh"
here=$(cd "$(dirname "$0")" && pwd)
templates=$here/../../scripts/slurm
export SLURM_CONF=$cluster/slurm.conf
jobs=()
trap 'for j in ${jobs[@]+"${jobs[@]}"}; do scancel "$j" 2> /dev/null || true; done; rm -rf "$work"' EXIT
[ "$(sinfo -h -N -o %t 2>&1)" = idle ] || fail "the Slurm node is not idle: $(sinfo -N 2>&1)"
train=(--model mnist_cnn -b 32 --train-limit 4096 --test-limit 64 --threads 1 --epochs 2 --lr-step-size 1)

"$bin/ddprun" --np 2 -- ddptrain "${train[@]}" --output-dir "$work/ref" > "$work/ref.out" 2>&1 ||
  fail "the reference run failed: $(cat "$work/ref.out")"

. "$(dirname "$0")/jobs.sh"

for template in single-node multi-node; do
  dir=$work/$template
  mkdir -p "$dir"
  extra=()
  [ "$template" = multi-node ] && extra=(--nodes=1 --ntasks-per-node=2 --cpus-per-task=1)
  job=$(sbatch --parsable ${extra[@]+"${extra[@]}"} --output="$dir/job.out" \
    --export=ALL,DDPRUN="$bin/ddprun",OUTPUT_DIR="$dir/run" "$templates/$template.sbatch" "${train[@]}" \
    --save-every-steps 1)
  jobs+=("$job")
  for _ in $(seq 600); do [ -f "$dir/run/checkpoint.pth" ] && break; sleep 0.1; done
  [ -f "$dir/run/checkpoint.pth" ] ||
    fail "$template: no checkpoint after 60 s (job $job: $(job_state "$job")): $(cat "$dir/job.out" 2>&1)"
  scancel --signal=USR1 --batch "$job"
  wait_for_job_end "$job" 120
  log=$(cat "$dir/job.out")
  [ "$state" = COMPLETED ] || fail "$template: job $job ended $state: $log"
  scontrol show job "$job" | grep -q "Restarts=1 " || fail "$template: job $job was not requeued once: $(scontrol show job "$job")"
  expect() { grep -q -- "$1" <<< "$log" || fail "$template: no '$1' in the job's log: $log"; }
  expect "batch: SIGUSR1 at .*; passing it on to ddprun"
  expect "ddptrain: preempted by SIGUSR1: every rank stopped after epoch 0 step [0-9]*; checkpoint saved in $dir/run"
  expect "ddprun: preempted: the ranks saved a checkpoint and stopped; requeued Slurm job $job (scontrol requeue)"
  expect "batch: ddprun exited with 75"
  expect "Slurm job $job, SLURM_RESTART_COUNT=1 (requeued 1 time(s))"
  expect "ddptrain: resumed from $dir/run/checkpoint.pth: continuing at epoch 0, step [1-9]"
  expect "^epoch 1/1 "
  expect "batch: ddprun exited with 0"
  /usr/bin/python3 "$here/../e2e/same_state.py" "$work/ref/checkpoint.pth" "$dir/run/checkpoint.pth" ||
    fail "$template: preempted, requeued and resumed under Slurm: not bit-identical to the uninterrupted run"
  echo "$template.sbatch: preempted, requeued (job $job, Restarts=1), resumed and finished bit-identical"
done
echo "PASSED: both Slurm templates preempt, requeue, resume and finish bit-identical to an uninterrupted run"
