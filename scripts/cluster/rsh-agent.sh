#!/usr/bin/env bash
# ssh's stand-in for the simulated cluster (scripts/cluster/cluster.sh): mpirun calls it as it would call ssh,
# `rsh-agent.sh HOST COMMAND...`, and it runs COMMAND through a shell on that node (its network namespace, hostname
# and names), as sshd would. Give it to ddprun with --rsh-agent (Open MPI's plm_rsh_agent).
# Like ssh, it stays on the calling node while the command runs. When the node crashes (`cluster.sh crash`: its
# processes killed with SIGKILL) it does what ssh to a dead host does: nothing, until mpirun ends it; mpirun learns of
# the crash from its lost connection to the node's daemon, as on a real cluster.
set -euo pipefail
host=${1:?usage: rsh-agent.sh HOST COMMAND...}
shift
grep -qx -- "$host" /run/ddprun-cluster/nodes 2> /dev/null ||
  { echo "rsh-agent.sh: no simulated node '$host' (scripts/cluster/cluster.sh status)" >&2; exit 255; }
trap 'kill -TERM "$child" 2> /dev/null; exit 143' TERM INT HUP
"$(dirname "$0")/cluster.sh" exec "$host" /bin/sh -c "$*" &
child=$!
code=0
wait "$child" || code=$?
while [ "$code" -eq 137 ] && kill -0 "$PPID" 2> /dev/null; do sleep 1; done  # a crashed node: ssh would hang
exit "$code"
