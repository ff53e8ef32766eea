#!/usr/bin/env bash
# Configures and builds one CMake preset (default: "default" = Release, CUDA when nvcc exists).
#   scripts/build.sh [preset] [extra cmake --build args, e.g. --target framepipe]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-default}
shift || true
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" "$@"
