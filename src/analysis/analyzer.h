// Analyzer: computes every Analysis field of a decoded frame (the contract in ARCHITECTURE.md)
// and hands back the frame's luma plane for enrichment. Backends: cpu/ (the reference, always
// built) and cuda/ (GPU kernels, built with FRAMEPIPE_ENABLE_CUDA).
//
// Thread rules: Analyze is called concurrently from every pipeline worker; implementations
// keep per-call state on the stack or in per-worker pools.
#pragma once

#include <vector>

#include "absl/status/status.h"
#include "common/frame.h"
#include "common/image.h"

namespace framepipe {

class Analyzer {
 public:
  virtual ~Analyzer() = default;
  // "cpu" or "cuda": goes into Analysis.backend.
  virtual const char* name() const = 0;
  // Fills `out` (all fields) and `luma` (BT.601 luma of `frame`, frame-sized). Errors are
  // Internal (a backend fault) and fail only this frame.
  virtual absl::Status Analyze(const Image& frame, Analysis* out, Image* luma) = 0;

  // One frame of a batch: Analyze's arguments and its outcome.
  struct BatchItem {
    const Image* frame = nullptr;
    Analysis* out = nullptr;
    Image* luma = nullptr;
    absl::Status status;
  };
  // Frames of any streams at once (the pipeline's micro-batching, PipelineOptions::batch): a
  // device backend analyses them in one launch. Each item's status is that frame's outcome, as
  // Analyze's. Called from one thread at a time. The default analyses them one by one.
  virtual void AnalyzeBatch(std::vector<BatchItem>& items) {
    for (BatchItem& item : items) item.status = Analyze(*item.frame, item.out, item.luma);
  }
};

}  // namespace framepipe
