#!/usr/bin/env bash
# Installs every Debian package ddprun needs to build, train and run its tests. Idempotent: packages already
# present are skipped, so a second run costs only a dpkg query.
set -euo pipefail

packages=(
  cmake g++ make
  libtorch-dev                    # LibTorch 1.13 (CPU)
  libopenmpi-dev openmpi-bin      # MPI: process group and CPU collectives
  libboost-program-options-dev    # ddptrain's flags and --config INI files
  libgtest-dev googletest         # unit and multi-rank tests
  zlib1g-dev                      # gzipped IDX files
  libisal-dev                     # ISA-L: the checkpoint reader's CRC-32 (about 10x zlib's)
  dataset-fashion-mnist           # the real data set, IDX format
  libopenblas0-openmp             # an optimized BLAS behind libblas.so.3 (the reference one is many times slower)
  python3-torch python3-torchvision  # tests that read our checkpoints with Python's torch.load
  clang-14 libclang-rt-14-dev     # the checkpoint reader's libFuzzer target (address + undefined sanitizers)
  slurmctld slurmd slurm-client munge  # a real one-node Slurm cluster for the sbatch/preempt/requeue test
  bc                              # the fault tests' timings
  python3-matplotlib              # scripts/plot_metrics.py
  iproute2 util-linux             # scripts/cluster/cluster.sh: simulated nodes (ip netns, tc, unshare, nsenter)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

sudo_cmd=
[ "$(id -u)" -ne 0 ] && sudo_cmd=sudo
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libblas.so.3 must point at OpenBLAS, not the reference BLAS that other packages may have pulled in.
alt=libblas.so.3-x86_64-linux-gnu
openblas=$(update-alternatives --list "$alt" 2>/dev/null | grep -m1 openblas || true)
if [ -n "$openblas" ] && ! update-alternatives --query "$alt" | grep -q "^Value: $openblas"; then
  $sudo_cmd update-alternatives --set "$alt" "$openblas"
fi
echo "install-deps: all packages present; libblas.so.3 -> $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)"
