#!/usr/bin/env bash
# Builds the GPU test and micro-benchmark here (nvcc needed, no GPU needed) and bundles them with
# the shared libraries they use into one folder, so they run on a bare GPU machine that has
# neither this project's dependencies nor a compiler setup:
#   scripts/gpu-bundle.sh [out_dir=.devcarry/gpu] [preset=default]
# Then, on the GPU machine: scripts/gpu-check.sh <out_dir> <report_dir>
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.devcarry/gpu}
preset=${2:-default}
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" --target gpu_test gpu_bench
bin=build/$preset
rm -rf "$out"
mkdir -p "$out/lib"
cp "$bin/tests/gpu_test" "$bin/bench/gpu_bench" "$out/"
scripts/collect-libs.sh "$out/lib" "$out/gpu_test" "$out/gpu_bench"
du -sh "$out"
