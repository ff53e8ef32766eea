// SceneCutDetector: the causal scene-cut detector of the ordered temporal stage. Frame n's
// decision uses frames <= n only, so results are never delayed.
//
// Evidence, per OK frame, against the last *informative* frame of the stream (the reference):
//  * structure: d = (1 - NCC) / 2 of the two 64x64 luma thumbnails (normalised cross-correlation:
//    blind to global gain and offset, so exposure ramps, fades and mild flashes leave it near 0,
//    while a different shot of the same brightness and colour does not);
//  * the recent past: r = d / (mean of d over the last `history` frames + `noise_floor`). Camera
//    motion and pans raise d on every frame and so the mean; a cut is a jump above it;
//  * exposure, from the luma histogram and mean: a frame whose share of clipped pixels (>= 250)
//    and mean luma jump up together against the reference is a flash, not a cut: for up to
//    `flash_max_frames` frames it is neither scored nor made the reference, so the frame after it
//    is compared with the frame before the flash (the return from a flash is no cut either);
//  * structure at all: a frame whose thumbnail standard deviation is below `flat_stddev` (black,
//    a fade's darkest frames, a lens cap) cannot be compared; it scores 0 and is not the
//    reference, so a fade to black and up into a new shot is one cut, at the first frame of the
//    new shot with structure, and a fade back into the same shot is none.
// cut_score = r / (r + ratio_at_half), in [0, 1); scene_cut = cut_score >= threshold. Before the
// first difference of a stream is known the mean is taken as `initial_history_mean` (moderate
// motion), so the second frame of a stream needs a clear jump to be a cut. A cut starts the
// history afresh (the new shot's motion is not the old one's), so shots of a few frames are found
// too. The first frame of a stream, and any frame while no reference exists, scores 0.
// Frames that are not OK (errors, drops, deadlines) are not observed: the next OK frame compares
// with the last OK reference.
#pragma once

#include <array>
#include <cstdint>

#include "common/frame.h"

namespace framepipe {

struct SceneCutConfig {
  double threshold = 0.5;              // scene_cut when cut_score >= this (`--scene-cut`)
  double ratio_at_half = 3.5;          // jump ratio r that scores 0.5
  double noise_floor = 0.003;          // added to the history mean: sensor and compression noise
  int history = 8;                     // frames in the recent-past mean (1..kMaxHistory)
  double initial_history_mean = 0.05;  // the mean before the first difference of a stream/shot
  double flat_stddev = 4.0;            // thumbnail standard deviation below this: no structure
  double flash_mean_rise = 30.0;       // flash: mean luma up by at least this ...
  double flash_clipped_rise = 0.15;    // ... and share of pixels >= 250 up by at least this
  int flash_max_frames = 2;            // longest flash; a longer bright run is compared normally
  static constexpr int kMaxHistory = 64;
};

class SceneCutDetector {
 public:
  explicit SceneCutDetector(const SceneCutConfig& config = {});

  // Observes the next OK frame of the stream (in order) and returns its cut_score in [0, 1).
  double Observe(const Analysis& frame);
  bool IsCut(double cut_score) const { return cut_score >= config_.threshold; }

  // Structure distance (1 - NCC) / 2 of two thumbnails, in [0, 1]; 0 when either is flat.
  static double StructureDistance(const std::array<uint8_t, kThumbnailBytes>& a,
                                  const std::array<uint8_t, kThumbnailBytes>& b);

 private:
  struct Reference {
    std::array<uint8_t, kThumbnailBytes> thumbnail{};
    uint64_t sum = 0, sumsq = 0;  // of the thumbnail
    double mean_luma = 0;
    double clipped_share = 0;
  };
  void Remember(double d);

  SceneCutConfig config_;
  bool has_ref_ = false;
  Reference ref_;
  int flash_run_ = 0;
  std::array<double, SceneCutConfig::kMaxHistory> recent_{};
  int recent_count_ = 0;
  int recent_next_ = 0;
  double recent_sum_ = 0;
};

}  // namespace framepipe
