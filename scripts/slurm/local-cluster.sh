#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests (no systemd needed): munged, slurmctld and slurmd
# run from a folder of their own, with the machine's cores, its memory and two stand-in GPUs (gres "gpu" backed by
# character devices that are /dev/null, so sbatch --gpus-per-task works and Slurm sets CUDA_VISIBLE_DEVICES; there
# is no GPU behind them).
#
#   scripts/slurm/local-cluster.sh start DIR [--simulated-nodes]   # configure and start; waits until idle
#   scripts/slurm/local-cluster.sh stop DIR    # stop what start started (by PID) and keep DIR's logs
#
# --simulated-nodes: one slurmd on each node of the simulated cluster (scripts/cluster/cluster.sh start, first),
# slurmctld on node1, so that jobs really span nodes; clients then run on a node too
# (scripts/cluster/cluster.sh exec node1 sbatch ...). Clients need SLURM_CONF=DIR/slurm.conf. Needs root (slurmd does) and Debian's slurmctld, slurmd,
# slurm-client and munge (scripts/install-deps.sh). Ports: SLURM_LOCAL_PORT (slurmctld, default 6817) and the next
# one (slurmd).
set -euo pipefail
action=${1:?usage: local-cluster.sh start|stop DIR}
dir=${2:?usage: local-cluster.sh start|stop DIR}

simulated=${3:-}
[ -z "$simulated" ] || [ "$simulated" = --simulated-nodes ] ||
  { echo "local-cluster.sh: unknown option '$simulated' (--simulated-nodes)" >&2; exit 2; }
node_tool=$(cd "$(dirname "$0")/../cluster" && pwd)/cluster.sh
daemons() { echo munged slurmctld; for f in "$dir"/slurmd*.pid; do [ -e "$f" ] && basename "$f" .pid; done; }

stop() {
  for daemon in $(daemons); do
    if [ -f "$dir/$daemon.pid" ]; then
      kill "$(cat "$dir/$daemon.pid")" 2> /dev/null || true
    fi
  done
  for daemon in $(daemons); do
    if [ -f "$dir/$daemon.pid" ]; then
      pid=$(cat "$dir/$daemon.pid")
      for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2> /dev/null || true
      rm -f "$dir/$daemon.pid"
    fi
  done
}

if [ "$action" = stop ]; then
  stop
  exit 0
fi
[ "$action" = start ] || { echo "local-cluster.sh: unknown action '$action'; use start or stop" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "local-cluster.sh: needs root (slurmd runs jobs as their users)" >&2; exit 2; }
for tool in munged mungekey slurmctld slurmd sinfo; do
  command -v "$tool" > /dev/null || { echo "local-cluster.sh: $tool not found; run scripts/install-deps.sh" >&2; exit 2; }
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
stop  # an earlier cluster in the same folder
rm -rf "$dir/state" "$dir/spool" "$dir/munge"
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 755 "$dir"

# munge: its own key and socket; the socket's folder must be 755 and everything owned by the munge user.
mungekey --create --keyfile="$dir/munge/munge.key" > /dev/null 2>&1
chown -R munge:munge "$dir/munge"
chmod 755 "$dir/munge"
chmod 400 "$dir/munge/munge.key"
socket=$dir/munge/munge.socket
setpriv --reuid=munge --regid=munge --init-groups munged --foreground --key-file="$dir/munge/munge.key" \
  --socket="$socket" --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
  --seed-file="$dir/munge/munged.seed" > /dev/null 2>&1 &
echo $! > "$dir/munged.pid"
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.05; done
[ -S "$socket" ] || { echo "local-cluster.sh: munged did not start: $(cat "$dir/munge/munged.log" 2>/dev/null)" >&2; exit 1; }

host=$(hostname -s)
address=127.0.0.1
nodes=$host
on=()  # the prefix that runs a command on node $node (here: none, this machine)
if [ -n "$simulated" ]; then
  [ -f /run/ddprun-cluster/nodes ] ||
    { echo "local-cluster.sh: --simulated-nodes: no simulated cluster (scripts/cluster/cluster.sh start)" >&2; exit 2; }
  nodes=$(cat /run/ddprun-cluster/nodes)
  host=$(head -1 <<< "$nodes")
  address=$("$node_tool" exec "$host" getent hosts "$host" | awk '{print $1}')
  on=("$node_tool" exec)
fi
cores=$(getconf _NPROCESSORS_ONLN)  # (nproc would answer OMP_NUM_THREADS)
memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
port=${SLURM_LOCAL_PORT:-6817}
# Two stand-in GPUs: Slurm wants character devices, so two more names for /dev/null's (1, 3); Slurm numbers them
# from their names and a job that asks for GPUs gets CUDA_VISIBLE_DEVICES. Where mknod is not allowed, /dev/null and
# /dev/zero themselves.
rm -f "$dir/nvidia0" "$dir/nvidia1"
if mknod "$dir/nvidia0" c 1 3 2> /dev/null && mknod "$dir/nvidia1" c 1 3 2> /dev/null; then
  gpus="$dir/nvidia[0-1]"
else
  gpus="/dev/null,/dev/zero"
fi
: > "$dir/gres.conf"
node_lines=
for node in $nodes; do
  echo "NodeName=$node Name=gpu File=$gpus" >> "$dir/gres.conf"
  node_address=$address
  [ -n "$simulated" ] && node_address=$("$node_tool" exec "$node" getent hosts "$node" | awk '{print $1}')
  node_lines+="NodeName=$node NodeAddr=$node_address CPUs=$cores RealMemory=$memory Gres=gpu:2 State=UNKNOWN"$'\n'
done
cat > "$dir/slurm.conf" <<CONF
# A one-node cluster for ddprun's tests (scripts/slurm/local-cluster.sh).
ClusterName=ddprun-test
SlurmctldHost=$host($address)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A short credential lifetime: a requeued job waits for it before it starts again.
AuthInfo=socket=$socket,cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.daemon.pid
SlurmdPidFile=$dir/slurmd.%n.daemon.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.%n.log
GresTypes=gpu
${node_lines}PartitionName=debug Nodes=$(tr '\n' ',' <<< "$nodes" | sed 's/,$//') Default=YES MaxTime=INFINITE State=UP
CONF
# The simulated nodes share /tmp, where each slurmstepd's PMIx server would make the same client folder: each node's
# own folder instead (scripts/cluster/cluster.sh gives every node its own /run/ddprun-cluster/local).
: > "$dir/mpi.conf"
[ -n "$simulated" ] && echo "PMIxCliTmpDirBase=/run/ddprun-cluster/local" > "$dir/mpi.conf"
export SLURM_CONF=$dir/slurm.conf
# run_on NODE COMMAND...: the command on that node (with --simulated-nodes; else here).
run_on() {
  local node=$1
  shift
  "${on[@]}" ${on[@]:+"$node"} "$@"
}
# start_daemon NAME NODE COMMAND...: in the background, from / (a job's working directory that vanishes with a test's
# folder must not take the daemons with it), exec'd (cluster.sh exec execs too) so that the PID recorded is its own.
start_daemon() {
  local name=$1 node=$2
  shift 2
  (cd / && exec "${on[@]}" ${on[@]:+"$node"} "$@" > "$dir/$name.out" 2>&1) &
  echo $! > "$dir/$name.pid"
}
start_daemon slurmctld "$host" slurmctld -D -c -f "$SLURM_CONF"
for node in $nodes; do
  mkdir -p "$dir/spool/$node"
  start_daemon "slurmd.$node" "$node" slurmd -D -N "$node" -f "$SLURM_CONF"
done
count=$(wc -w <<< "$nodes")
for _ in $(seq 150); do
  [ "$(run_on "$host" sinfo -h -N -o %t 2> /dev/null | grep -c '^idle$')" = "$count" ] &&
    { echo "local-cluster.sh: $count node(s) idle ($(tr '\n' ' ' <<< "$nodes" | sed 's/ $//')); export SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 0.2
done
echo "local-cluster.sh: the nodes did not become idle in 30 s: $(run_on "$host" sinfo -N 2>&1 | tail -3)" >&2
tail -5 "$dir/slurmctld.log" "$dir"/slurmd.*.log >&2 || true
exit 1
