#!/usr/bin/env bash
# ddprun builds the launch command users expect, for each way of giving ranks and hosts: --np; the slots of -H or a
# hostfile; GPUs per node (--gpus-per-node, CUDA_VISIBLE_DEVICES) times the nodes; the Slurm allocation (SLURM_NTASKS,
# nodes x tasks per node, SLURM_JOB_NODELIST as hosts); srun instead of mpirun; the environment the ranks need; and
# it starts real ranks, as root too.
set -euo pipefail
bin=$(cd "$1" && pwd)
. "$(dirname "$0")/common.sh"
# dry VAR=VALUE... -- DDPRUN_FLAGS...: the command ddprun prints, in an environment with only PATH and the VARs.
dry() {
  local vars=()
  while [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  env -i PATH="$PATH" ${vars[@]+"${vars[@]}"} "$bin/ddprun" --dry-run "$@"
}
expect() {  # expect LINE PATTERN WHAT
  [[ "$1" == $2 ]] || fail "$3: $1"
  echo "ok: $3"
}
cores=$(nproc)

line=$(dry -- --np 3 -- ddptrain --lr 0.1 --output-dir "a b")
expect "$line" "mpirun -np 3 --bind-to none --map-by slot *" "--np: no binding, one rank per slot"
expect "$line" "* $bin/ddptrain --lr 0.1 --output-dir 'a b'" "ddptrain found beside ddprun, arguments kept"
[ "$cores" -lt 3 ] || expect "$line" "mpirun -np 3 --bind-to none --map-by slot -x *" "no --oversubscribe with enough cores"
expect "$(dry -- --np $((cores + 1)) -- /bin/true)" "* --oversubscribe *" "more ranks than cores: --oversubscribe"
[ -e /dev/nvidia0 ] || expect "$(dry -- -- /bin/true)" "mpirun -np 1 *" "no GPU, no Slurm, no --np: 1 rank"

expect "$(dry -- -H a:2,b:2 -- /bin/true)" "mpirun -np 4 --bind-to none --map-by slot -H a:2,b:2 *" "-H with slots"
expect "$(dry -- -H a,b --gpus-per-node 4 -- /bin/true)" "mpirun -np 8 * -H a:4,b:4 *" "-H and --gpus-per-node"
expect "$(dry -- --np 3 -H a,b -- /bin/true)" "mpirun -np 3 * -H a:2,b:2 *" "--np over hosts without slots"
printf 'n1 slots=2  # first\nn2 slots=3\n' > "$work/hosts"
expect "$(dry -- --hostfile "$work/hosts" -- /bin/true)" "mpirun -np 5 * --hostfile $work/hosts *" "--hostfile slots"
expect "$(dry CUDA_VISIBLE_DEVICES=0,1 -- -- /bin/true)" "mpirun -np 2 "* "CUDA_VISIBLE_DEVICES on this node"
expect "$(dry CUDA_VISIBLE_DEVICES=GPU-1a,GPU-2b,-1,3 -- -- /bin/true)" "mpirun -np 2 "* "CUDA_VISIBLE_DEVICES up to -1"
expect "$(dry CUDA_VISIBLE_DEVICES=0,1 -- -H a,b -- /bin/true)" "mpirun -np 4 * -H a:2,b:2 *" "CUDA_VISIBLE_DEVICES x -H"

slurm=(SLURM_JOB_ID=7 "SLURM_JOB_NODELIST=gpu[01-02,05]" "SLURM_TASKS_PER_NODE=2(x3)" SLURM_JOB_NUM_NODES=3)
expect "$(dry "${slurm[@]}" SLURM_NTASKS=6 -- -- /bin/true)" "mpirun -np 6 * -H gpu01:2,gpu02:2,gpu05:2 *" \
  "Slurm: SLURM_NTASKS on SLURM_JOB_NODELIST's hosts"
expect "$(dry "${slurm[@]}" CUDA_VISIBLE_DEVICES=0,1,2,3 -- -- /bin/true)" "mpirun -np 12 * -H gpu01:4,gpu02:4,gpu05:4 *" \
  "Slurm with GPUs: GPUs per node x nodes"
expect "$(dry SLURM_JOB_ID=7 SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE=4 -- -- /bin/true)" "mpirun -np 8 "* \
  "Slurm: SLURM_JOB_NUM_NODES x SLURM_NTASKS_PER_NODE"
expect "$(dry "${slurm[@]}" SLURM_NTASKS=6 -- --launcher srun -x A=b -- ddptrain --epochs 1)" \
  "srun --mpi=pmix --ntasks=6 --nodelist=gpu01,gpu02,gpu05 --ntasks-per-node=2 --cpu-bind=none --kill-on-bad-exit=1 --export=ALL,A=b $bin/ddptrain --epochs 1" \
  "--launcher srun"

line=$(dry NCCL_DEBUG=INFO NCCL_SOCKET_IFNAME=lo OMP_NUM_THREADS=2 LD_LIBRARY_PATH=/x HOME=/root -- --np 2 -x FOO=bar -x HOME -x UNSET -- /bin/true)
for x in "-x FOO=bar" "-x HOME" "-x NCCL_DEBUG" "-x NCCL_SOCKET_IFNAME" "-x OMP_NUM_THREADS" "-x LD_LIBRARY_PATH" "-x PATH" "-x DDPRUN_PROGRESS"; do
  expect "$line" "* $x *" "passes $x"
done
[[ "$line" != *UNSET* ]] || fail "-x of an unset variable passed on: $line"

cores=$(nproc)
cores="$cores core$([ "$cores" -eq 1 ] || echo s)"
for bad in "--np two|--np 'two' is not a positive whole number" \
           "-H a:2 --np 3|3 ranks do not fit the 2 slots of -H; give fewer ranks (--np) or more slots (HOST:SLOTS)" \
           "--hostfile $work/none|--hostfile '$work/none' cannot be opened: No such file or directory; check the path" \
           "--hostfile /dev/zero|--hostfile '/dev/zero' is not a regular file (a device, pipe or socket); give the path of a file" \
           "--hostfile $work|--hostfile '$work' is a folder; give the path of a file" \
           "--np 100000|100000 ranks on this node's $cores is more than $((16 * $(nproc))) (16 per core), which would flood it; give fewer ranks (--np) or name more hosts (-H)" \
           "--launcher pbs|--launcher 'pbs' is not one ddprun knows; choose mpirun or srun" \
           "--max-restarts -1|--max-restarts '-1' is not a non-negative whole number" \
           "--np 2|no program to start; usage: ddprun --np 2 -- ddptrain [ARGS...]"; do
  code=0
  # shellcheck disable=SC2086
  env -i PATH="$PATH" "$bin/ddprun" ${bad%%|*} $([[ $bad == "--np 2|"* ]] || echo -- /bin/true) 2> "$work/err" || code=$?
  [ "$code" -eq 2 ] || fail "ddprun ${bad%%|*}: exit code $code, expected 2"
  [ "$(cat "$work/err")" = "ddprun: error: ${bad#*|}" ] || fail "ddprun ${bad%%|*}: $(cat "$work/err")"
  echo "ok: ddprun ${bad%%|*} refused with one line"
done

# ddprun itself lets Open MPI run as root (common.sh exported the variables for the other scripts: drop them here).
env -u OMPI_ALLOW_RUN_AS_ROOT -u OMPI_ALLOW_RUN_AS_ROOT_CONFIRM "$bin/ddprun" --np 2 -x FOO=bar -- /bin/sh -c 'test "$OMPI_COMM_WORLD_SIZE" = 2 && test "$FOO" = bar' ||
  fail "mpirun did not start 2 ranks with FOO=bar"
echo "PASSED"
