#!/usr/bin/env bash
# Builds the GPU test, the kernel micro-benchmark and the server-capacity benchmark here (nvcc
# needed, no GPU needed) and bundles them with the shared libraries they use into one folder, so
# they run on a bare GPU machine that has neither this project's dependencies nor a compiler:
#   scripts/gpu-bundle.sh [out_dir=.devcarry/gpu] [preset=default]
# It also packs the folder as out_dir.tar.xz (for hosts reached through a size-limited copy).
# Then, on the GPU machine: scripts/gpu-check.sh <out_dir or out_dir.tar.xz> <report_dir>
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.devcarry/gpu}
preset=${2:-default}
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" --target gpu_test gpu_bench gpu_capacity
bin=build/$preset
rm -rf "$out"
mkdir -p "$out/lib"
cp "$bin/tests/gpu_test" "$bin/bench/gpu_bench" "$bin/bench/gpu_capacity" "$out/"
strip --strip-unneeded "$out/gpu_test" "$out/gpu_bench" "$out/gpu_capacity" 2>/dev/null || true
scripts/collect-libs.sh "$out/lib" "$out/gpu_test" "$out/gpu_bench" "$out/gpu_capacity"
tar -C "$(dirname "$out")" -cf - "$(basename "$out")" | xz -T0 -6 > "$out.tar.xz"
du -sh "$out" "$out.tar.xz"
