#include "enrich/enricher.h"

#include <cstring>
#include <vector>

#include "opencv2/core.hpp"
#include "opencv2/features2d.hpp"

#include "common/cpu_dispatch.h"

namespace framepipe {
namespace {

// Cell index (B>>5)<<6 | (G>>5)<<3 | (R>>5) of each pixel of a row: a separate pass so the
// compiler vectorises it (AVX2 where the CPU has it).
template <int kB, int kR>
FP_MULTIVERSION void CellIndices(const uint8_t* __restrict p, uint16_t* __restrict idx, int w) {
  for (int x = 0; x < w; ++x) {
    idx[x] = static_cast<uint16_t>(((p[3 * x + kB] >> 5) << 6) | ((p[3 * x + 1] >> 5) << 3) |
                                   (p[3 * x + kR] >> 5));
  }
}

// Counted into four interleaved histograms (repeated cells do not stall on one counter).
void CountCells(const uint16_t* idx, int w, uint32_t h[4][512]) {
  int x = 0;
  for (; x + 4 <= w; x += 4) {
    ++h[0][idx[x]];
    ++h[1][idx[x + 1]];
    ++h[2][idx[x + 2]];
    ++h[3][idx[x + 3]];
  }
  for (; x < w; ++x) ++h[0][idx[x]];
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
    std::vector<uint16_t> idx(static_cast<size_t>(w));
    for (int y = 0; y < frame.height(); ++y) {
      if (rgb) {
        CellIndices<2, 0>(frame.row(y), idx.data(), w);
      } else {
        CellIndices<0, 2>(frame.row(y), idx.data(), w);
      }
      CountCells(idx.data(), w, h);
    }
    for (int i = 0; i < 512; ++i) total[i] = h[0][i] + h[1][i] + h[2][i] + h[3][i];
  }
  int best = 0;
  for (int i = 1; i < 512; ++i) {
    if (total[i] > total[best]) best = i;
  }
  return {static_cast<float>(((best >> 6) & 7) * 32 + 16),
          static_cast<float>(((best >> 3) & 7) * 32 + 16),
          static_cast<float>((best & 7) * 32 + 16)};
}

uint32_t CountFastCorners(const Image& luma, int threshold) {
  if (luma.width() < 7 || luma.height() < 7) return 0;
  cv::Mat m(luma.height(), luma.width(), CV_8UC1, const_cast<uint8_t*>(luma.data()), luma.stride());
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
