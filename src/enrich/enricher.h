// Per-frame enrichment on the CPU: flags from the analysis (dark, overexposed, blurry), the
// dominant colour and FAST keypoints. Runs in parallel across frames; stateless.
#pragma once

#include <array>

#include "absl/status/status.h"
#include "common/frame.h"
#include "common/image.h"
#include "enrich/scene_cut.h"

namespace framepipe {

// Thresholds, with their documented defaults (also `framepipe serve --help`).
struct EnrichConfig {
  double dark_mean_luma = 40.0;          // dark: mean luma below this
  double overexposed_mean_luma = 215.0;  // overexposed: mean luma above this
  double blurry_sharpness = 100.0;       // blurry: Laplacian variance below this
  SceneCutConfig scene_cut;              // the scene-cut detector (threshold: --scene-cut)
  int fast_threshold = 20;               // FAST corner threshold (contract: 20, nonmax)
};

// Dominant colour: the centre of the fullest cell of an 8x8x8 grid over B, G, R (32 levels per
// cell side; ties go to the lowest cell index), as {B, G, R}.
std::array<float, 3> DominantBgr(const Image& frame);

// Number of FAST-9 corners of `luma` with nonmax suppression.
uint32_t CountFastCorners(const Image& luma, int threshold);

// Fills every per-frame Enrichment field (not scene_change/scene_cut/cut_score/motion: those are
// set by the ordered TemporalStage).
absl::Status Enrich(const Image& frame, const Image& luma, const Analysis& analysis,
                    const EnrichConfig& config, Enrichment* out);

}  // namespace framepipe
