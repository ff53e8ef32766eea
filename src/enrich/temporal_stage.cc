#include "enrich/temporal_stage.h"

#include <cstdlib>

namespace framepipe {

double TemporalStage::SceneChange(const std::array<uint32_t, kHistogramBins>& a, uint64_t na,
                                  const std::array<uint32_t, kHistogramBins>& b, uint64_t nb) {
  if (na == 0 || nb == 0) return 0.0;
  // 1/2 * sum |a_i/na - b_i/nb| = sum |a_i*nb - b_i*na| / (2*na*nb), exact in integers.
  unsigned __int128 num = 0;
  for (int i = 0; i < kHistogramBins; ++i) {
    const __int128 d = static_cast<__int128>(a[i]) * nb - static_cast<__int128>(b[i]) * na;
    num += static_cast<unsigned __int128>(d < 0 ? -d : d);
  }
  return static_cast<double>(num) / (2.0 * static_cast<double>(na) * static_cast<double>(nb));
}

double TemporalStage::Motion(const std::array<uint8_t, kThumbnailBytes>& a,
                             const std::array<uint8_t, kThumbnailBytes>& b) {
  // A 32-bit sum cannot overflow (4096 x 255), and this is the form compilers turn into psadbw:
  // it runs once per frame in the serial ordered stage, so it must stay a few dozen cycles.
  static_assert(255ull * kThumbnailBytes <= 0xffffffffull);
  uint32_t sum = 0;
  for (int i = 0; i < kThumbnailBytes; ++i) {
    sum += static_cast<uint32_t>(std::abs(static_cast<int>(a[i]) - static_cast<int>(b[i])));
  }
  return static_cast<double>(sum) / (255.0 * kThumbnailBytes);
}

void TemporalStage::Apply(FrameResult& r) {
  if (r.status != FrameStatus::kOk) return;
  const uint64_t n = static_cast<uint64_t>(r.analysis.width) * r.analysis.height;
  if (has_prev_) {
    r.enrichment.scene_change = SceneChange(r.analysis.histogram, n, prev_hist_, prev_pixels_);
    r.enrichment.motion = Motion(r.analysis.thumbnail, prev_thumb_);
  } else {
    r.enrichment.scene_change = 0.0;
    r.enrichment.motion = 0.0;
  }
  r.enrichment.cut_score = cuts_.Observe(r.analysis);
  r.enrichment.scene_cut = cuts_.IsCut(r.enrichment.cut_score);
  has_prev_ = true;
  prev_pixels_ = n;
  prev_hist_ = r.analysis.histogram;
  prev_thumb_ = r.analysis.thumbnail;
}

}  // namespace framepipe
