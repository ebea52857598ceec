#!/usr/bin/env bash
# ddprun builds the mpirun command users expect: -np, no binding, ddptrain found beside ddprun, arguments kept,
# --oversubscribe when needed, the environment (-x, NCCL_*) passed on; and it starts real ranks, as root too.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
line=$(env -u SLURM_NTASKS -u CUDA_VISIBLE_DEVICES "$bin/ddprun" --np 3 --dry-run -- ddptrain --lr 0.1 --output-dir "a b")
echo "$line"
[[ "$line" == "mpirun -np 3 --bind-to none --map-by slot "* ]] || fail "unexpected start: $line"
[[ "$line" == *" $bin/ddptrain --lr 0.1 --output-dir 'a b'" ]] || fail "program or arguments changed: $line"
[[ "$line" != *--oversubscribe* ]] || [ "$(nproc)" -lt 3 ] || fail "--oversubscribe with enough cores: $line"
cores=$(nproc)
line=$("$bin/ddprun" --np $((cores + 1)) --dry-run -x FOO=bar -x HOME -- /bin/true)
[[ "$line" == *" --oversubscribe "* ]] || fail "more ranks than cores need --oversubscribe: $line"
[[ "$line" == *" -x FOO=bar "* && "$line" == *" -x HOME "* ]] || fail "-x not passed on: $line"
line=$(NCCL_DEBUG=INFO NCCL_SOCKET_IFNAME=lo "$bin/ddprun" --np 2 --dry-run -- /bin/true)
[[ "$line" == *" -x NCCL_DEBUG "* && "$line" == *" -x NCCL_SOCKET_IFNAME "* ]] || fail "NCCL_* not passed on: $line"
line=$(env -u CUDA_VISIBLE_DEVICES SLURM_NTASKS=4 "$bin/ddprun" --dry-run -- /bin/true)
[[ "$line" == "mpirun -np 4 "* ]] || fail "SLURM_NTASKS not used: $line"
line=$(env -u SLURM_NTASKS CUDA_VISIBLE_DEVICES=0,1 "$bin/ddprun" --dry-run -- /bin/true)
[[ "$line" == "mpirun -np 2 "* ]] || fail "CUDA_VISIBLE_DEVICES not used: $line"
err=$(mktemp)
if "$bin/ddprun" --np two -- /bin/true 2> "$err"; then fail "accepted --np two"; fi
grep -q "^ddprun: error: --np 'two' is not a positive whole number" "$err" || fail "bad --np message: $(cat "$err")"
rm -f "$err"
# ddprun itself lets Open MPI run as root (common.sh exported the variables for the other scripts: drop them here).
env -u OMPI_ALLOW_RUN_AS_ROOT -u OMPI_ALLOW_RUN_AS_ROOT_CONFIRM "$bin/ddprun" --np 2 -x FOO=bar -- /bin/sh -c 'test "$OMPI_COMM_WORLD_SIZE" = 2 && test "$FOO" = bar' ||
  fail "mpirun did not start 2 ranks with FOO=bar"
echo "PASSED"
