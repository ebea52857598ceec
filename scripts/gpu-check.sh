#!/usr/bin/env bash
# The GPU check: on a machine with a GPU (and no network), builds ddprun against the CUDA LibTorch of pip's torch and
# NCCL of pip's nvidia-nccl, runs the NCCL tests (one rank), the CPU comm tests (two ranks) and a short GPU training
# run, and writes every log into LOG_DIR, with one PASS/FAIL line per step in LOG_DIR/summary.txt.
#
#   scripts/gpu-check.sh --prepare     on a Debian 12 machine with network (the CPU machines): puts into .gpu-check/
#                                      the .deb files of Open MPI, GoogleTest, Boost.Program_options and zlib (used
#                                      on the GPU machine only where its own are missing) and a Fashion-MNIST subset
#   scripts/gpu-check.sh LOG_DIR       on the GPU machine; exits non-zero if any step failed
#   scripts/gpu-check.sh --dry-run LOG_DIR
#                                      every step up to and including CMake's configure, then stops (to check this
#                                      script where there is no GPU; TORCH_CMAKE_PREFIX names a LibTorch there)
#
# Environment: TORCH_CMAKE_PREFIX, NCCL_ROOT, CUDA_ROOT override what is found; GPU_CHECK_BUILD_DIR (default
# build-gpu; the prepared packages are unpacked beside it, into build-gpu-deps); GPU_CHECK_BUDGET (seconds for the
# whole check, default 450); GPU_CHECK_FORCE_DEBS=1 uses the prepared packages even where the system has its own.
# To send .gpu-check/ to the GPU machine, name it among the ignored paths that travel with the checkout (20 MiB).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prepared=$repo/.gpu-check
debs=$prepared/debs
dataset=$prepared/fashion-mnist

# Open MPI and what its libraries and launch components need (ldd; the InfiniBand, UCX, OFI and PSM transports are
# left out: one node needs only shared memory), GoogleTest, Boost.Program_options (headers come with libboost1.74-dev,
# 9 MiB), zlib, ISA-L.
packages=(
  openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15 libevent-core-2.1-7
  libevent-pthreads-2.1-7 libudev1 libnl-3-200 libmunge2
  libgtest-dev
  libboost-program-options1.74-dev libboost-program-options1.74.0 libboost1.74-dev
  zlib1g zlib1g-dev libisal2 libisal-dev
)
# The subset of Fashion-MNIST that the training run needs (it reads 2048 + 512 samples).
train_samples=8192
test_samples=2048

die() {
  echo "gpu-check: $*" >&2
  exit 1
}

# ---- --prepare: on a Debian 12 machine with network ------------------------------------------------------------------

# Writes the first N samples of each IDX file in $1 to $2 (headers rewritten), gzipped.
write_dataset_subset() {
  python3 - "$1" "$2" "$train_samples" "$test_samples" <<'EOF'
import gzip, struct, sys
src, dst, counts = sys.argv[1], sys.argv[2], {"train": int(sys.argv[3]), "t10k": int(sys.argv[4])}
for split, count in counts.items():
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{split}-{kind}-ubyte.gz"
        with gzip.open(f"{src}/{name}") as f:
            data = f.read()
        dims = data[3]
        header = 4 + 4 * dims
        shape = struct.unpack(">" + "I" * dims, data[4:header])
        n = min(count, shape[0])
        per_sample = 1
        for d in shape[1:]:
            per_sample *= d
        with gzip.open(f"{dst}/{name}", "wb", compresslevel=9) as g:
            g.write(data[:4] + struct.pack(">I", n) + data[8:header] + data[header:header + n * per_sample])
EOF
}

prepare() {
  command -v apt-get >/dev/null || die "--prepare needs apt-get (run it on a Debian 12 machine)"
  rm -rf "$debs" "$dataset"
  mkdir -p "$debs" "$dataset"
  if ! (cd "$debs" && apt-get download "${packages[@]}"); then
    echo "gpu-check: apt-get download failed; updating the package lists and trying again"
    apt-get update -qq
    (cd "$debs" && apt-get download "${packages[@]}")
  fi

  local source=/usr/share/datasets/fashion-mnist tmp=
  if [ ! -f "$source/train-images-idx3-ubyte.gz" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb root)
    source=$tmp/root/usr/share/datasets/fashion-mnist
  fi
  write_dataset_subset "$source" "$dataset"
  [ -z "$tmp" ] || rm -rf "$tmp"

  echo "gpu-check: prepared in $prepared:"
  du -sh "$debs" "$dataset"
  du -sh "$prepared" | awk '{print "gpu-check: total " $1}'
}

# ---- the check on the GPU machine -----------------------------------------------------------------------------------

dry_run=0
log_dir=
failures=0
started=$SECONDS
budget=${GPU_CHECK_BUDGET:-450}

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit (cut to what is left of the budget), its output in
# LOG_DIR/NAME.log, and records PASS or FAIL in the summary. Never fails itself: the check goes on.
step() {
  local name=$1 want=$2
  shift 2
  local left=$((budget - (SECONDS - started)))
  local limit=$((want < left ? want : left))
  if [ "$limit" -lt 5 ]; then
    record "$name" "FAIL (not run: the budget of $budget s is spent)" 0
    return 0
  fi
  local start=$SECONDS rc=0
  echo "gpu-check: $name (at most $limit s)"
  timeout --kill-after=10 "$limit" "$@" >"$log_dir/$name.log" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then
    record "$name" PASS $((SECONDS - start))
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    record "$name" "FAIL (timed out after $limit s; see $name.log)" $((SECONDS - start))
  else
    record "$name" "FAIL (exit $rc; see $name.log)" $((SECONDS - start))
  fi
  return 0
}

# record NAME STATUS SECONDS
record() {
  printf '%-32s %-58s %4d s\n' "$1" "$2" "$3" | tee -a "$log_dir/summary.txt"
  case $2 in PASS*) ;; *) failures=$((failures + 1)) ;; esac
}

# The CUDA LibTorch, NCCL and the CUDA toolkit, from pip's packages and PATH unless given.
find_gpu_stack() {
  torch_prefix=${TORCH_CMAKE_PREFIX:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)}
  if [ -z "${NCCL_ROOT:-}" ]; then
    NCCL_ROOT=$(python3 - 2>/dev/null <<'EOF' || true
import glob, os, site
roots = []
try:
    import nvidia.nccl
    roots += list(nvidia.nccl.__path__)
except Exception:
    pass
for s in site.getsitepackages() + [site.getusersitepackages()]:
    headers = glob.glob(os.path.join(s, "nvidia", "**", "nccl.h"), recursive=True)
    roots += [os.path.dirname(os.path.dirname(h)) for h in headers]
for r in roots:
    if os.path.exists(os.path.join(r, "include", "nccl.h")):
        print(r)
        break
EOF
    )
  fi
  local nvcc
  nvcc=$(command -v nvcc || true)
  [ -n "$nvcc" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || nvcc=/usr/local/cuda/bin/nvcc
  cuda_root=${CUDA_ROOT:-$([ -z "$nvcc" ] || dirname "$(dirname "$(readlink -f "$nvcc")")")}
  {
    echo "torch cmake prefix: ${torch_prefix:-NOT FOUND}"
    echo "NCCL_ROOT:          ${NCCL_ROOT:-not found among the pip packages}"
    echo "CUDA toolkit:       ${cuda_root:-NOT FOUND}"
  } | tee -a "$log_dir/versions.txt"
  # Without NCCL_ROOT, CMake still looks in the CUDA toolkit and the system paths (nccl-backend-compiled-in says).
  [ -n "$torch_prefix" ] && [ -d "$torch_prefix" ] && [ -n "$cuda_root" ]
}

# Which of MPI, GoogleTest, Boost.Program_options, zlib and ISA-L CMake finds on this system ("MPI GTest" = those
# missing).
probe_system() {
  local dir=$deps/probe
  mkdir -p "$dir"
  cat >"$dir/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.18)
project(probe C CXX)
find_package(MPI COMPONENTS C QUIET)
find_package(GTest QUIET)
find_package(Boost QUIET COMPONENTS program_options)
find_package(ZLIB QUIET)
find_path(ISAL_INCLUDE_DIR isa-l/crc.h)
find_library(ISAL_LIBRARY isal)
set(missing "")
if(NOT ISAL_INCLUDE_DIR OR NOT ISAL_LIBRARY)
  list(APPEND missing ISAL)
endif()
if(NOT MPI_C_FOUND OR NOT MPIEXEC_EXECUTABLE)
  list(APPEND missing MPI)
endif()
foreach(p GTest Boost ZLIB)
  if(NOT ${p}_FOUND)
    list(APPEND missing ${p})
  endif()
endforeach()
string(REPLACE ";" " " missing "${missing}")
file(WRITE ${CMAKE_BINARY_DIR}/missing.txt "${missing}")
EOF
  rm -rf "$dir/build"
  cmake -S "$dir" -B "$dir/build" >"$log_dir/probe.log" 2>&1 || true
  if [ "${GPU_CHECK_FORCE_DEBS:-0}" = 1 ]; then
    echo "MPI GTest Boost ZLIB ISAL"
  else
    cat "$dir/build/missing.txt" 2>/dev/null || echo "MPI GTest Boost ZLIB ISAL"
  fi
}

# Unpacks the prepared .deb files into $1 (dpkg -x, or ar + tar where there is no dpkg) and makes its
# absolute symbolic links point inside it.
unpack_debs() {
  local root=$1
  ls "$debs"/*.deb >/dev/null 2>&1 || {
    echo "no .deb files in $debs: run scripts/gpu-check.sh --prepare on a CPU machine first"
    return 1
  }
  rm -rf "$root"
  mkdir -p "$root"
  local deb
  for deb in "$debs"/*.deb; do
    if command -v dpkg >/dev/null; then
      dpkg -x "$deb" "$root"
    else
      python3 - "$deb" "$root" <<'EOF'
import io, sys, tarfile
deb, root = sys.argv[1], sys.argv[2]
with open(deb, "rb") as f:
    blob = f.read()
assert blob[:8] == b"!<arch>\n", deb + " is not a .deb"
pos = 8
while pos < len(blob):
    name = blob[pos:pos + 16].decode().strip().rstrip("/")
    size = int(blob[pos + 48:pos + 58])
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(blob[pos + 60:pos + 60 + size])) as t:
            # As dpkg -x: absolute symbolic links stay as they are (fixed afterwards).
            if hasattr(tarfile, "fully_trusted_filter"):
                t.extractall(root, filter="fully_trusted")
            else:
                t.extractall(root)
    pos += 60 + size + (size % 2)
EOF
    fi
  done
  local link target
  find "$root" -type l -lname '/*' | while read -r link; do
    target=$(readlink "$link")
    [ ! -e "$root$target" ] || ln -sfn "$root$target" "$link"
  done
  echo "unpacked $(find "$debs" -name "*.deb" | wc -l) packages into $root ($(du -sh "$root" | cut -f1))"
}

# Points PATH, LD_LIBRARY_PATH and Open MPI/PMIx at the unpacked Open MPI; adds CMake hints to cmake_args.
use_unpacked() {
  local root=$1 missing=$2 multiarch=x86_64-linux-gnu
  local usr=$root/usr libdir=$root/usr/lib/$multiarch
  # Libraries for the dynamic loader: Open MPI's and PMIx's own always, the others only where the system has none.
  local libs=$root/ld-library-path
  rm -rf "$libs"
  mkdir -p "$libs"
  local system_libs lib name
  system_libs=$( (/sbin/ldconfig -p || ldconfig -p) 2>/dev/null | awk 'NR > 1 {print $1}' | sort -u)
  for lib in "$libdir"/*.so.* "$root/lib/$multiarch"/*.so.*; do
    [ -e "$lib" ] || continue
    name=$(basename "$lib")
    case $name in
      libmpi* | libopen-* | liboshmem* | libmca_common* | libompitrace* | libpmix*) ;;
      *) ! grep -qxF "$name" <<<"$system_libs" || continue ;;
    esac
    [ -e "$libs/$name" ] || ln -s "$lib" "$libs/$name"
  done
  export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if [[ " $missing " == *" MPI "* ]]; then
    # Debian names its programs mpirun.openmpi etc. (update-alternatives makes mpirun); the wrappers find their
    # paths relative to OPAL_PREFIX.
    mkdir -p "$root/bin"
    ln -sfn "$usr/bin/orterun" "$root/bin/mpirun"
    ln -sfn "$usr/bin/opal_wrapper" "$root/bin/mpicc"
    export PATH=$root/bin:$usr/bin:$PATH
    export OPAL_PREFIX=$usr
    export PMIX_MCA_mca_base_component_path=$libdir/pmix2/lib/pmix
    export HWLOC_PLUGINS_PATH=$libdir/hwloc
    # One node: shared memory (without cross-memory attach, which containers often forbid) and TCP; the transports
    # whose libraries were left out stay unloaded.
    export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_vader_single_copy_mechanism=none
    export OMPI_MCA_mtl=^ofi,psm,psm2 OMPI_MCA_osc=^ucx OMPI_MCA_mca_base_component_show_load_errors=0
    cmake_args+=(-DMPI_C_COMPILER="$root/bin/mpicc" -DMPIEXEC_EXECUTABLE="$root/bin/mpirun")
  fi
  [[ " $missing " != *" GTest "* ]] || cmake_args+=(-DGTest_DIR="$libdir/cmake/GTest")
  [[ " $missing " != *" Boost "* ]] || cmake_args+=(-DBoost_DIR="$libdir/cmake/Boost-1.74.0")
  [[ " $missing " != *" ZLIB "* ]] || cmake_args+=(-DZLIB_INCLUDE_DIR="$usr/include" -DZLIB_LIBRARY="$libdir/libz.so")
  [[ " $missing " != *" ISAL "* ]] || cmake_args+=(-DISAL_INCLUDE_DIR="$usr/include" -DISAL_LIBRARY="$libdir/libisal.so")
}

# Every test of a binary ran (none skipped for want of a GPU).
none_skipped() {
  ! grep -E "SKIPPED \] NcclOnGpu" "$1"
}

check_on_gpu() {
  mkdir -p "$log_dir"
  log_dir=$(cd "$log_dir" && pwd)
  : >"$log_dir/summary.txt"
  # The build, and what is unpacked from the prepared packages, beside it (not in .gpu-check, which travels).
  build=${GPU_CHECK_BUILD_DIR:-$repo/build-gpu}
  deps=$build-deps
  mkdir -p "$deps"
  exec > >(tee -a "$log_dir/gpu-check.log") 2>&1
  echo "gpu-check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), commit $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (with local changes)')"

  {
    echo "== uname: $(uname -a)"
    echo "== nproc: $(nproc)"
    echo "== python3: $(python3 --version 2>&1)"
    echo "== torch: $(python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -1)"
    echo "== nvcc: $(nvcc --version 2>&1 | tail -2 | tr '\n' ' ')"
    echo "== cmake: $(cmake --version 2>&1 | head -1)"
    echo "== ninja: $(ninja --version 2>&1)"
    echo "== c++: $(c++ --version 2>&1 | head -1)"
    echo "== ldd: $(ldd --version 2>&1 | head -1)"
  } >"$log_dir/versions.txt"
  timeout 30 nvidia-smi >"$log_dir/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed or is missing" >>"$log_dir/nvidia-smi.txt"

  cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release)
  local found=1
  find_gpu_stack || found=0
  if [ $found = 1 ]; then
    record find-cuda-libtorch-nccl PASS $((SECONDS - started))
  else
    record find-cuda-libtorch-nccl "FAIL (see versions.txt)" $((SECONDS - started))
  fi
  cmake_args+=(-DCMAKE_PREFIX_PATH="${torch_prefix:-}" -DNCCL_ROOT="${NCCL_ROOT:-}" -DCUDAToolkit_ROOT="${cuda_root:-}")
  if [ -n "${cuda_root:-}" ]; then
    export CUDA_HOME=$cuda_root CUDACXX=$cuda_root/bin/nvcc
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
  # NCCL's bootstrap over the loopback interface; one node, no InfiniBand.
  export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo} NCCL_IB_DISABLE=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}

  local missing
  missing=$(probe_system)
  echo "gpu-check: missing on this system: ${missing:-nothing}"
  if [ -n "$missing" ]; then
    export debs
    export -f unpack_debs
    # shellcheck disable=SC2016  # $1 is for the inner bash
    step unpack-debs 120 bash -c 'unpack_debs "$1"' _ "$deps/root"
    use_unpacked "$deps/root" "$missing"
  fi
  {
    echo "== from the prepared packages: ${missing:-nothing}"
    echo "== mpirun: $(command -v mpirun || echo none) $(mpirun --version 2>&1 | head -1)"
  } >>"$log_dir/versions.txt"
  step mpirun-version 30 mpirun --version

  rm -rf "$build"
  step configure 180 cmake -S "$repo" -B "$build" "${cmake_args[@]}"
  if grep -q "ddprun: NCCL backend on" "$log_dir/configure.log" 2>/dev/null; then
    record nccl-backend-compiled-in PASS 0
    grep "ddprun: NCCL backend on" "$log_dir/configure.log" >>"$log_dir/versions.txt"
  else
    record nccl-backend-compiled-in "FAIL (see configure.log)" 0
  fi
  if [ $dry_run = 1 ]; then
    echo "gpu-check: dry run: stopping after configure"
    finish
    return
  fi

  step build 360 ninja -C "$build" -j 16
  local bin=$build/bin mpirun=(mpirun --oversubscribe --bind-to none)
  step test-nccl-1-rank 120 "${mpirun[@]}" -np 1 "$bin/test_nccl_communicator" --gtest_color=no
  if [ -f "$log_dir/test-nccl-1-rank.log" ] && grep -q "PASSED" "$log_dir/test-nccl-1-rank.log"; then
    if none_skipped "$log_dir/test-nccl-1-rank.log" >/dev/null; then
      record nccl-gpu-tests-ran PASS 0
    else
      record nccl-gpu-tests-ran "FAIL (the GPU tests were skipped)" 0
    fi
  fi
  # Two ranks on one GPU: both must refuse with one line naming the rank without a GPU.
  step test-nccl-2-ranks-1-gpu 60 "${mpirun[@]}" -np 2 "$bin/test_nccl_communicator" --gtest_color=no
  step test-communicator-2-ranks 120 "${mpirun[@]}" -np 2 "$bin/test_communicator" --gtest_color=no

  local data=$dataset
  [ -f "$data/train-images-idx3-ubyte.gz" ] || data=/usr/share/datasets/fashion-mnist
  rm -rf "$log_dir/run"
  step train-gpu-nccl 150 "${mpirun[@]}" -np 1 "$bin/ddptrain" --data-path "$data" --epochs 1 --train-limit 2048 \
    --test-limit 512 --output-dir "$log_dir/run" --backend nccl
  if grep -q "nccl 2\." "$log_dir/train-gpu-nccl.log" 2>/dev/null; then
    record train-used-nccl PASS 0
  else
    record train-used-nccl "FAIL (no 'nccl 2.' in train-gpu-nccl.log)" 0
  fi
  finish
}

finish() {
  echo "total: $((SECONDS - started)) s, $failures failed" | tee -a "$log_dir/summary.txt"
  echo "gpu-check: logs in $log_dir"
}

case ${1:-} in
  --prepare)
    prepare
    ;;
  --dry-run)
    [ $# -eq 2 ] || die "usage: scripts/gpu-check.sh --dry-run LOG_DIR"
    dry_run=1
    log_dir=$2
    check_on_gpu
    [ "$failures" -eq 0 ]
    ;;
  "" | -h | --help)
    awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"
    [ $# -eq 1 ] || exit 2
    ;;
  -*)
    die "unknown option $1 (see --help)"
    ;;
  *)
    log_dir=$1
    check_on_gpu
    [ "$failures" -eq 0 ]
    ;;
esac
