#!/usr/bin/env bash
# Runs on a GPU machine: the GPU tests (kernels and CUDA Analyzer vs the CPU reference) and the
# kernel micro-benchmark, then writes a small report.
#   scripts/gpu-check.sh <bundle_dir from gpu-bundle.sh> <report_dir>
set -uo pipefail
bundle=${1:?bundle dir}
report=${2:-gpu-report}
mkdir -p "$report"
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
echo "gpu_test exit $test_rc, gpu_bench exit $bench_rc" | tee -a "$report/gpu-check.txt"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
