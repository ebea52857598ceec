#!/usr/bin/env bash
# Configures and builds ddprun into ./build (or $BUILD_DIR) with every core; assumes scripts/install-deps.sh ran.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" "$@"
cmake --build "$build" -j "$(nproc)"
