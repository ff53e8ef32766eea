// TemporalStage: the ordered per-stream stage. Compares each OK frame with the previous OK frame
// of the same stream: scene_change (1/2 L1 distance of normalised luma histograms, 0..1) and
// motion (mean |thumbnail difference| / 255); runs the causal scene-cut detector (cut_score and
// scene_cut, enrich/scene_cut.h). The first OK frame of a stream gets 0 and no cut. Frames that
// are not OK are skipped: the next OK frame compares with the last OK one. Not thread-safe: the
// pipeline calls it in frame order, one frame at a time.
#pragma once

#include <array>
#include <cstdint>

#include "common/frame.h"
#include "enrich/scene_cut.h"

namespace framepipe {

class TemporalStage {
 public:
  explicit TemporalStage(const SceneCutConfig& scene_cut = {}) : cuts_(scene_cut) {}
  void Apply(FrameResult& result);

  // The two measures, exposed for tests and other backends.
  static double SceneChange(const std::array<uint32_t, kHistogramBins>& a, uint64_t na,
                            const std::array<uint32_t, kHistogramBins>& b, uint64_t nb);
  static double Motion(const std::array<uint8_t, kThumbnailBytes>& a,
                       const std::array<uint8_t, kThumbnailBytes>& b);

 private:
  SceneCutDetector cuts_;
  bool has_prev_ = false;
  uint64_t prev_pixels_ = 0;
  std::array<uint32_t, kHistogramBins> prev_hist_{};
  std::array<uint8_t, kThumbnailBytes> prev_thumb_{};
};

}  // namespace framepipe
