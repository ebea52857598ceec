#!/usr/bin/env bash
# A cluster of simulated nodes on this one machine, for multi-node runs and tests: each node is a network namespace
# with its own hostname (a UTS namespace), its own interface and address, joined to the others by a bridge; the node
# names resolve on every node (/etc/netns/<namespace>/hosts, which `ip netns exec` puts in place). The addresses
# (10.213.0.0/24) exist only inside the namespaces this script creates: the bridge has none, nothing routes out.
# Processes share the machine's file system (a shared output folder, as on a cluster) and its shared memory, but
# Open MPI tells nodes apart by hostname, so ranks of one node use shared memory and ranks of different nodes TCP.
# Each node also has a node-local folder, its own "local disk": /run/ddprun-cluster/local shows a different folder
# on each node (a bind mount in the node's mount namespace).
# Needs root (ip netns, unshare).
#
#   cluster.sh start [--nodes N] [--link-rate RATE]   N nodes node1..nodeN (2 to 4, default 2); RATE shapes every
#                                                     node's link both ways with tc tbf (e.g. 1gbit; default: none)
#   cluster.sh stop                                   ends every process on the nodes, removes them
#   cluster.sh exec NODE PROGRAM [ARGS...]            runs PROGRAM on NODE (its network, hostname and names)
#   cluster.sh link NODE down|up                      cuts or restores NODE's link (a failing cable or switch port)
#   cluster.sh crash NODE                             kills every process on NODE at once (SIGKILL: a node crash);
#                                                     the node stays, as one that rebooted
#   cluster.sh status                                 the nodes, their addresses and link rates
# mpirun reaches the other nodes through scripts/cluster/rsh-agent.sh (ddprun --rsh-agent), which stands in for ssh:
#   cluster.sh exec node1 build/bin/ddprun -H node1:2,node2:2 --rsh-agent scripts/cluster/rsh-agent.sh -- ddptrain ...
set -euo pipefail

state=/run/ddprun-cluster
bridge=ddprun-br0
subnet=10.213.0

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}
namespace() { echo "ddprun-$1"; }
nodes() { [ -f "$state/nodes" ] && cat "$state/nodes" || true; }
known_node() {
  grep -qx -- "$1" <(nodes) || die "no node '$1' in the cluster (nodes: $(nodes | tr '\n' ' ')); start it first"
}

stop() {
  for node in $(nodes); do
    local ns
    ns=$(namespace "$node")
    # Every process on the node: nothing the cluster ran outlives it.
    for signal in TERM KILL; do
      pids=$(ip netns pids "$ns" 2> /dev/null || true)
      [ -z "$pids" ] && break
      kill -"$signal" $pids 2> /dev/null || true
      [ "$signal" = TERM ] && sleep 1
    done
    ip link del "veth-$node" 2> /dev/null || true
    ip netns del "$ns" 2> /dev/null || true
    umount "$state/uts-$node" 2> /dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  ip link del "$bridge" 2> /dev/null || true
  rm -rf "$state"
}

start() {
  local count=2 rate=""
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes) count=${2:?--nodes needs a number}; shift 2 ;;
      --link-rate) rate=${2:?--link-rate needs a rate, e.g. 1gbit}; shift 2 ;;
      *) die "start: unknown option '$1' (--nodes N, --link-rate RATE)" ;;
    esac
  done
  [[ $count =~ ^[2-4]$ ]] || die "--nodes '$count': give 2 to 4 nodes"
  [ -z "$rate" ] || [[ $rate =~ ^[0-9]+(\.[0-9]+)?([kmg]?bit)$ ]] || die "--link-rate '$rate': give a rate such as 1gbit or 500mbit"
  [ "$(id -u)" -eq 0 ] || die "needs root (network and UTS namespaces)"
  command -v ip > /dev/null && command -v tc > /dev/null && command -v unshare > /dev/null ||
    die "needs ip, tc and unshare (iproute2, util-linux: scripts/install-deps.sh installs them)"
  [ -e "$state" ] && stop  # a cluster left from before (a killed test) is replaced
  mkdir -p "$state/local"
  ip link add "$bridge" type bridge
  ip link set "$bridge" up
  local hosts="127.0.0.1 localhost"$'\n'
  for i in $(seq 1 "$count"); do hosts+="$subnet.$i node$i"$'\n'; done
  for i in $(seq 1 "$count"); do
    local node=node$i ns
    ns=$(namespace "$node")
    echo "$node" >> "$state/nodes"
    ip netns add "$ns"
    ip link add "veth-$node" type veth peer name eth0 netns "$ns"
    ip link set "veth-$node" master "$bridge" up
    ip -n "$ns" addr add "$subnet.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "/etc/netns/$ns"
    printf '%s' "$hosts" > "/etc/netns/$ns/hosts"
    echo "$node" > "/etc/netns/$ns/hostname"
    mkdir -p "$state/local-$node"
    touch "$state/uts-$node"
    unshare --uts="$state/uts-$node" hostname "$node"
    if [ -n "$rate" ]; then
      # Both directions: into the node (the bridge's side of the pair) and out of it (the node's eth0).
      tc qdisc add dev "veth-$node" root tbf rate "$rate" burst 256kb latency 50ms
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 50ms
    fi
  done
  echo "${rate:-unshaped}" > "$state/link-rate"
  # Every node reaches every other before the cluster counts as started.
  for i in $(seq 1 "$count"); do
    for j in $(seq 1 "$count"); do
      [ "$i" = "$j" ] && continue
      run_on "node$i" /usr/bin/python3 -c "
import socket, sys
s = socket.socket(); s.settimeout(3)
try:
    s.connect(('node$j', 9)); sys.exit(0)
except ConnectionRefusedError: sys.exit(0)  # reached, nothing listens: the link works
except OSError as e: sys.exit('node$i cannot reach node$j: %s' % e)" || die "the nodes cannot reach each other"
    done
  done
  status
}

# Runs "$@" on node $1: its hostname, its network, and in a mount namespace of its own the node's /etc/hosts and
# local folder (the rest of the file system, /sys and its cgroups included, is the machine's: slurmd needs them).
# With run_exec=exec, in place of this script.
run_exec=
run_on() {
  local node=$1
  shift
  known_node "$node"
  $run_exec nsenter --uts="$state/uts-$node" --net="/run/netns/$(namespace "$node")" \
    unshare --mount --propagation slave /bin/sh -c \
    'mount --bind "$1" /etc/hosts && mount --bind "$2" "$3" && shift 3 && exec "$@"' \
    sh "/etc/netns/$(namespace "$node")/hosts" "$state/local-$node" "$state/local" "$@"
}

status() {
  [ -f "$state/nodes" ] || {
    echo "no cluster"
    return
  }
  echo "cluster: $(nodes | wc -l) nodes, links $(cat "$state/link-rate")"
  for node in $(nodes); do
    echo "  $node $(ip -n "$(namespace "$node")" -4 -o addr show dev eth0 | awk '{print $4}')" \
      "link $(cat "/sys/class/net/veth-$node/operstate")"
  done
}

command=${1:-}
shift || true
case $command in
  start) start "$@" ;;
  stop) stop ;;
  status) status ;;
  exec)
    [ $# -ge 2 ] || die "usage: cluster.sh exec NODE PROGRAM [ARGS...]"
    run_exec=exec run_on "$@" ;;
  crash)
    [ $# -eq 1 ] || die "usage: cluster.sh crash NODE"
    known_node "$1"
    pids=$(ip netns pids "$(namespace "$1")")
    [ -n "$pids" ] && kill -KILL $pids
    echo "crashed $1: killed $(echo $pids | wc -w) process(es)" ;;
  link)
    [ $# -eq 2 ] && [[ $2 =~ ^(up|down)$ ]] || die "usage: cluster.sh link NODE down|up"
    known_node "$1"
    ip link set "veth-$1" "$2" ;;
  *) die "usage: cluster.sh start [--nodes N] [--link-rate RATE] | stop | status | exec NODE PROGRAM... | link NODE down|up | crash NODE" ;;
esac
