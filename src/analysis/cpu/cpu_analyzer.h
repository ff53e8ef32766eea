// CpuAnalyzer: the reference Analyzer. Exact integer arithmetic (luma_ops.h); large frames are
// split into row bands across cores with oneTBB when `intra_frame_parallel` is on, which cuts
// single-stream latency when fewer frames are in flight than there are cores.
#pragma once

#include "analysis/analyzer.h"

namespace framepipe {

struct CpuAnalyzerOptions {
  // Split frames of at least `parallel_min_pixels` into row bands processed in parallel.
  bool intra_frame_parallel = true;
  int64_t parallel_min_pixels = 1 << 20;
};

class CpuAnalyzer : public Analyzer {
 public:
  explicit CpuAnalyzer(CpuAnalyzerOptions options = {}) : options_(options) {}
  const char* name() const override { return "cpu"; }
  absl::Status Analyze(const Image& frame, Analysis* out, Image* luma) override;

 private:
  CpuAnalyzerOptions options_;
};

}  // namespace framepipe
