# What the end-to-end scripts share: a scratch folder ($work, removed on exit), mpirun allowed as root (CI runs as
# root), and fail(). Each script sources it first: . "$(dirname "$0")/common.sh"
work=$(mktemp -d /tmp/ddprun_e2e.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
# wait_for_file FILE WHAT [SECONDS]: waits up to SECONDS (30) for FILE to appear; fails naming WHAT.
wait_for_file() {
  local seconds=${3:-30}
  for _ in $(seq $((seconds * 20))); do [ -e "$1" ] && return 0; sleep 0.05; done
  fail "no $2 after $seconds s"
}
# rank_pid PATTERN RANK: the pid of the process whose command line matches PATTERN and whose Open MPI rank is RANK.
rank_pid() {
  local p
  for p in $(pgrep -f "$1"); do
    if tr '\0' '\n' < "/proc/$p/environ" 2> /dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$p"
      return 0
    fi
  done
  fail "no rank $2 among the processes matching '$1'"
}
# signal_and_wait SIGNAL VICTIM JOB: sends SIGNAL to VICTIM, waits for the background job JOB; sets $code (its exit
# code) and $elapsed (seconds from the signal to its end).
signal_and_wait() {
  local start
  start=$(date +%s.%N)
  kill "-$1" "$2"
  code=0
  wait "$3" || code=$?
  elapsed=$(echo "$(date +%s.%N) - $start" | bc)
}
