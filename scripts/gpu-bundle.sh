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
# Every shared library except the C library itself (the GPU host has its own, newer glibc).
for exe in "$out/gpu_test" "$out/gpu_bench"; do
  ldd "$exe" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libresolv.so*) ;;
      *) cp -n "$lib" "$out/lib/" ;;
    esac
  done
done
du -sh "$out"
