# Sourced by the training benchmarks (train_features.sh, comm_env_ab.sh) from the repository root: builds ddptrain
# into ./build (or $BUILD_DIR), sets `mpirun` for 2 ranks on this machine, `tmp` (a folder removed on exit) and
# median_after_first (the median of the lines after the first, one figure per line).
build=${BUILD_DIR:-build}
[ -d "$build" ] || scripts/build.sh > /dev/null
cmake --build "$build" --target ddptrain > /dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mpirun=(mpirun -np 2 --bind-to none)
[ "$(getconf _NPROCESSORS_ONLN)" -ge 2 ] || mpirun+=(--oversubscribe)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
median_after_first() { tail -n +2 | awk '{ print "x", $1 }' | awk -f scripts/bench/summarize.awk | cut -d' ' -f2; }
