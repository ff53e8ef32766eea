#!/usr/bin/env bash
# Runs on a GPU machine: the GPU tests (kernels and CUDA Analyzer vs the CPU reference), the
# kernel micro-benchmark and the server-capacity benchmark (pipeline with CUDA vs CPU backend),
# then writes a small report.
#   scripts/gpu-check.sh <bundle_dir or bundle.tar.xz from gpu-bundle.sh> <report_dir>
set -uo pipefail
bundle=${1:?bundle dir}
report=${2:-gpu-report}
mkdir -p "$report"
if [ -f "$bundle" ]; then  # packed: unpack next to a temporary directory
  tmp=$(mktemp -d)
  tar -C "$tmp" -xJf "$bundle" || exit 1
  bundle="$tmp/$(ls "$tmp")"
fi
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "# framepipe GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 || true
} | tee "$report/gpu-check.txt"
echo "## gpu_test" | tee -a "$report/gpu-check.txt"
"$bundle/gpu_test" --gtest_output="xml:$report/gpu_test.xml" 2>&1 | tee "$report/gpu_test.log" |
  grep -E "^\[ *(RUN|OK|FAILED|PASSED|SKIPPED) |Failure|error" | tee -a "$report/gpu-check.txt"
test_rc=${PIPESTATUS[0]}
echo "## gpu_bench" | tee -a "$report/gpu-check.txt"
"$bundle/gpu_bench" "$report/gpu_bench.json" 2>&1 | tee -a "$report/gpu-check.txt"
bench_rc=${PIPESTATUS[0]}
echo "## gpu_capacity" | tee -a "$report/gpu-check.txt"
"$bundle/gpu_capacity" --json "$report/gpu_capacity.json" 2>&1 | tee -a "$report/gpu-check.txt"
capacity_rc=${PIPESTATUS[0]}
echo "gpu_test exit $test_rc, gpu_bench exit $bench_rc, gpu_capacity exit $capacity_rc" |
  tee -a "$report/gpu-check.txt"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$capacity_rc" -eq 0 ]
