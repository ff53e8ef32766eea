// The production stages: decode (analysis/decoder), analyse (any Analyzer backend), enrich and
// the ordered temporal stage (enrich/). Assembled here so src/pipeline's core stays free of
// OpenCV and CUDA: it only sees Stages.
#pragma once

#include <memory>

#include "analysis/analyzer.h"
#include "analysis/decoder.h"
#include "enrich/enricher.h"
#include "pipeline/stage.h"

namespace framepipe {

struct StandardStageOptions {
  DecodeLimits limits;
  EnrichConfig enrich;
  // Also provide Stages::analyse_batch (Analyzer::AnalyzeBatch), used when the pipeline batches.
  bool batch_analyse = false;
};

Stages MakeStandardStages(std::shared_ptr<Analyzer> analyzer, const StandardStageOptions& options);

// Checks an Analyzer's output for internal consistency (sizes, histogram total, ranges), so a
// faulty backend yields an INTERNAL result for the frame instead of silent garbage.
absl::Status ValidateAnalysis(const Image& frame, const Analysis& a, const Image& luma);

}  // namespace framepipe
