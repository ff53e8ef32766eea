// CudaAnalyzer: the analysis stage as CUDA kernels (kernels/). Per-worker CUDA streams, each with
// pinned host staging and device buffers reused across frames (grown only when a larger frame
// arrives: no cudaMalloc per frame); per frame an async H2D copy, the fused luma+histogram+sums
// kernel, the gradient and thumbnail kernels, and async D2H of the small results and the luma
// plane (enrichment runs FAST on it). Workers use separate streams, so one frame's copies
// overlap another's kernels. Every CUDA error becomes an Internal status for that frame.
//
// Thread rules: Analyze is thread-safe; each call checks a slot (stream + buffers) out of the
// pool for its duration.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/analyzer.h"

namespace framepipe {

struct CudaAnalyzerOptions {
  int device = 0;
  int streams = 2;  // slots: one per pipeline worker
};

class CudaAnalyzer : public Analyzer {
 public:
  // Fails with FailedPrecondition when no usable device exists (no driver, no GPU, bad index).
  static absl::StatusOr<std::unique_ptr<CudaAnalyzer>> Create(const CudaAnalyzerOptions& options);
  ~CudaAnalyzer() override;

  const char* name() const override { return "cuda"; }
  absl::Status Analyze(const Image& frame, Analysis* out, Image* luma) override;

  const std::string& device_description() const { return description_; }
  int device() const { return device_; }
  // Theoretical peak memory bandwidth of the device, GB/s (from clock and bus width).
  double peak_bandwidth_gbps() const { return peak_gbps_; }

  // Number of device (re)allocations so far: stays flat in steady state.
  int allocations() const;

  struct Slot;

 private:
  CudaAnalyzer() = default;
  Slot* Acquire();
  void Release(Slot* slot);

  int device_ = 0;
  std::string description_;
  double peak_gbps_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Slot*> free_;
};

// Whether a CUDA device is usable here (for tests that skip without one).
bool CudaDeviceAvailable(std::string* why_not = nullptr);

}  // namespace framepipe
