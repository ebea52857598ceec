# What the end-to-end scripts share: a scratch folder ($work, removed on exit), mpirun allowed as root (CI runs as
# root), and fail(). Each script sources it first: . "$(dirname "$0")/common.sh"
work=$(mktemp -d /tmp/ddprun_e2e.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
