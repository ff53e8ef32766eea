#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): sets up (Debian packages), builds the default
# preset and runs every ctest; then builds the ThreadSanitizer and AddressSanitizer presets and
# runs the pipeline and service tests under them. Ends with one line: "N passed, N failed".
#   scripts/test.sh            everything
#   FRAMEPIPE_SANITIZERS=0 scripts/test.sh   skip the sanitizer phases
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
jobs=$(nproc)
passed=0
failed=0
phase() {  # phase <name> <ctest preset> <build target...>
  local name=$1 preset=$2
  shift 2
  echo "== $name: build"
  if ! scripts/build.sh "$preset" "$@"; then
    echo "== $name: BUILD FAILED"
    failed=$((failed + 1))
    return
  fi
  echo "== $name: ctest"
  local out
  out=$(mktemp)
  ctest --preset "$preset" -j "$jobs" --timeout 900 2>&1 | tee "$out"
  local total fail
  total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$out" | tail -1)
  fail=$(sed -n 's/.*, \([0-9]*\) tests failed out of.*/\1/p' "$out" | tail -1)
  if [ -z "$total" ]; then
    echo "== $name: ctest did not report (counted as one failure)"
    failed=$((failed + 1))
  else
    passed=$((passed + total - fail))
    failed=$((failed + fail))
  fi
  rm -f "$out"
}
phase "default (Release)" default
if [ "${FRAMEPIPE_SANITIZERS:-1}" != "0" ]; then
  san_targets=(--target pipeline_test stages_test video_test service_test reactor_lifecycle_test read_budget_test http2_guard_test sigterm_test metrics_test framepipe)
  phase "ThreadSanitizer" tsan "${san_targets[@]}"
  phase "AddressSanitizer+UBSan" asan "${san_targets[@]}" reliability_test
  phase "libFuzzer (clang, ASan+UBSan)" fuzz --target decode_fuzzer video_fuzzer http2_guard_fuzzer
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
