# What the simulated-cluster tests share, after tests/e2e/common.sh ($work, fail, wait_for_file): the tests' argument
# BIN_DIR SOURCE_DIR as $bin and $source_dir, a skip (77) without root, $cluster and $agent (scripts/cluster/), the
# cluster stopped on exit, and on_node1 ARGS...: ddprun on node1 with 2 ranks on node1 and 2 on node2.
#   . "$(dirname "$0")/common.sh"
bin=$(cd "$1" && pwd)
source_dir=$(cd "$2" && pwd)
. "$source_dir/tests/e2e/common.sh"
[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: the simulated cluster needs root (CI runs as root)"; exit 77; }
cluster=$source_dir/scripts/cluster/cluster.sh
agent=$source_dir/scripts/cluster/rsh-agent.sh
trap '"$cluster" stop > /dev/null; rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1
on_node1() { "$cluster" exec node1 "$bin/ddprun" -H node1:2,node2:2 --rsh-agent "$agent" "$@"; }
