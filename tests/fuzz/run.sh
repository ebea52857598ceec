#!/usr/bin/env bash
# Builds the checkpoint reader's libFuzzer target with clang-14 (address and undefined sanitizers) into BUILD_DIR
# and fuzzes it for SECONDS (default 30) from the seed corpus in tests/fuzz/corpus. A crash fails the test and
# leaves the input as BUILD_DIR/crash-*; new inputs found go to BUILD_DIR/corpus, not into the repository.
#
#   tests/fuzz/run.sh BUILD_DIR [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$1
seconds=${2:-30}
command -v clang++-14 > /dev/null || { echo "FAILED: clang++-14 is missing; run scripts/install-deps.sh" >&2; exit 1; }
mkdir -p "$build"
cmake -S "$here" -B "$build" -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j2 > "$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
mkdir -p "$build/corpus"
cd "$build"
# LibTorch is not instrumented: leaks it keeps on purpose (registries) would drown real ones.
ASAN_OPTIONS=detect_leaks=0:detect_container_overflow=0 UBSAN_OPTIONS=print_stacktrace=1 \
  ./checkpoint_reader_fuzzer -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1 \
  corpus "$here/corpus" 2>&1 | tail -25
echo "PASSED: ${seconds} s of fuzzing found no crash"
