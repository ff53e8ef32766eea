#include "enrich/enricher.h"

#include <cstring>
#include <vector>

#include "opencv2/core.hpp"
#include "opencv2/features2d.hpp"

namespace framepipe {
namespace {

// Cell index (B>>5)<<6 | (G>>5)<<3 | (R>>5), counted into four interleaved histograms.
template <int kB, int kR>
void CountCells(const uint8_t* p, int w, uint32_t h[4][512]) {
  int x = 0;
  for (; x + 4 <= w; x += 4, p += 12) {
    ++h[0][((p[kB] >> 5) << 6) | ((p[1] >> 5) << 3) | (p[kR] >> 5)];
    ++h[1][((p[3 + kB] >> 5) << 6) | ((p[4] >> 5) << 3) | (p[3 + kR] >> 5)];
    ++h[2][((p[6 + kB] >> 5) << 6) | ((p[7] >> 5) << 3) | (p[6 + kR] >> 5)];
    ++h[3][((p[9 + kB] >> 5) << 6) | ((p[10] >> 5) << 3) | (p[9 + kR] >> 5)];
  }
  for (; x < w; ++x, p += 3) ++h[0][((p[kB] >> 5) << 6) | ((p[1] >> 5) << 3) | (p[kR] >> 5)];
}

}  // namespace

std::array<float, 3> DominantBgr(const Image& frame) {
  std::vector<uint32_t> storage(4 * 512, 0);
  auto* h = reinterpret_cast<uint32_t(*)[512]>(storage.data());
  const int w = frame.width();
  uint32_t total[512] = {};
  if (frame.format() == PixelFormat::kGray8) {
    // B = G = R = v: only the diagonal cells are used.
    uint32_t g[256] = {};
    for (int y = 0; y < frame.height(); ++y) {
      const uint8_t* p = frame.row(y);
      for (int x = 0; x < w; ++x) ++g[p[x]];
    }
    for (int v = 0; v < 256; ++v) total[((v >> 5) << 6) | ((v >> 5) << 3) | (v >> 5)] += g[v];
  } else {
    const bool rgb = frame.format() == PixelFormat::kRgb8;
    for (int y = 0; y < frame.height(); ++y) {
      if (rgb) {
        CountCells<2, 0>(frame.row(y), w, h);
      } else {
        CountCells<0, 2>(frame.row(y), w, h);
      }
    }
    for (int i = 0; i < 512; ++i) total[i] = h[0][i] + h[1][i] + h[2][i] + h[3][i];
  }
  int best = 0;
  for (int i = 1; i < 512; ++i) {
    if (total[i] > total[best]) best = i;
  }
  return {static_cast<float>(((best >> 6) & 7) * 32 + 16),
          static_cast<float>(((best >> 3) & 7) * 32 + 16), static_cast<float>((best & 7) * 32 + 16)};
}

uint32_t CountFastCorners(const Image& luma, int threshold) {
  if (luma.width() < 7 || luma.height() < 7) return 0;
  cv::Mat m(luma.height(), luma.width(), CV_8UC1, const_cast<uint8_t*>(luma.data()),
            luma.stride());
  std::vector<cv::KeyPoint> kps;
  cv::FAST(m, kps, threshold, /*nonmaxSuppression=*/true, cv::FastFeatureDetector::TYPE_9_16);
  return static_cast<uint32_t>(kps.size());
}

absl::Status Enrich(const Image& frame, const Image& luma, const Analysis& analysis,
                    const EnrichConfig& config, Enrichment* out) {
  if (frame.empty() || luma.empty()) return absl::InternalError("enrich got an empty image");
  out->dark = analysis.mean_luma < config.dark_mean_luma;
  out->overexposed = analysis.mean_luma > config.overexposed_mean_luma;
  out->blurry = analysis.sharpness < config.blurry_sharpness;
  out->dominant_bgr = DominantBgr(frame);
  out->keypoints = CountFastCorners(luma, config.fast_threshold);
  return absl::OkStatus();
}

}  // namespace framepipe
