#include "analysis/cpu/cpu_analyzer.h"

#include <algorithm>
#include <array>

#include "absl/strings/str_cat.h"
#include "analysis/cpu/luma_ops.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/combinable.h"
#include "oneapi/tbb/parallel_for.h"
#include "opencv2/core.hpp"
#include "opencv2/imgproc.hpp"

namespace framepipe {
namespace {
constexpr int kBandRows = 64;

// Luma of rows [y0, y1) with OpenCV's SIMD BGR2GRAY (bit-identical to cpu::Luma, ~5x faster),
// then their histogram while the rows are still in cache.
void LumaAndHistogram(const Image& src, int y0, int y1, Image* luma, uint32_t hist[256]) {
  if (y1 <= y0) return;
  cv::Mat in(y1 - y0, src.width(), CV_8UC3, const_cast<uint8_t*>(src.row(y0)), src.stride());
  cv::Mat out(y1 - y0, src.width(), CV_8UC1, luma->mutable_row(y0), luma->stride());
  cv::cvtColor(in, out,
               src.format() == PixelFormat::kRgb8 ? cv::COLOR_RGB2GRAY : cv::COLOR_BGR2GRAY);
  cpu::Histogram(*luma, y0, y1, hist);
}
}  // namespace

absl::Status CpuAnalyzer::Analyze(const Image& frame, Analysis* out, Image* luma) {
  if (frame.empty() || frame.channels() == 0) {
    return absl::InternalError("cpu analyzer got an empty or untyped image");
  }
  const int w = frame.width(), h = frame.height();
  const uint64_t n = static_cast<uint64_t>(w) * static_cast<uint64_t>(h);
  const bool gray = frame.format() == PixelFormat::kGray8;
  *luma = gray ? frame : Image::Allocate(w, h, PixelFormat::kGray8);
  *out = Analysis{};
  out->width = static_cast<uint32_t>(w);
  out->height = static_cast<uint32_t>(h);
  out->backend = name();

  const bool parallel =
      options_.intra_frame_parallel && static_cast<int64_t>(n) >= options_.parallel_min_pixels;
  cpu::GradientSums grad;
  if (!parallel) {
    if (gray) {
      cpu::Histogram(frame, 0, h, out->histogram.data());
    } else {
      LumaAndHistogram(frame, 0, h, luma, out->histogram.data());
    }
    grad = cpu::Gradients(*luma, 0, h);
    cpu::Thumbnail(*luma, 0, kThumbnailSize, out->thumbnail.data());
  } else {
    using Hist = std::array<uint32_t, 256>;
    oneapi::tbb::combinable<Hist> hists([] { return Hist{}; });
    oneapi::tbb::parallel_for(oneapi::tbb::blocked_range<int>(0, h, kBandRows),
                              [&](const oneapi::tbb::blocked_range<int>& r) {
                                Hist& hist = hists.local();
                                if (gray) {
                                  cpu::Histogram(frame, r.begin(), r.end(), hist.data());
                                } else {
                                  LumaAndHistogram(frame, r.begin(), r.end(), luma, hist.data());
                                }
                              });
    hists.combine_each([&](const Hist& hist) {
      for (int i = 0; i < 256; ++i) out->histogram[i] += hist[i];
    });
    oneapi::tbb::combinable<cpu::GradientSums> sums;
    oneapi::tbb::parallel_for(oneapi::tbb::blocked_range<int>(0, h, kBandRows),
                              [&](const oneapi::tbb::blocked_range<int>& r) {
                                sums.local().Add(cpu::Gradients(*luma, r.begin(), r.end()));
                              });
    sums.combine_each([&](const cpu::GradientSums& s) { grad.Add(s); });
    oneapi::tbb::parallel_for(oneapi::tbb::blocked_range<int>(0, kThumbnailSize, 8),
                              [&](const oneapi::tbb::blocked_range<int>& r) {
                                cpu::Thumbnail(*luma, r.begin(), r.end(), out->thumbnail.data());
                              });
  }
  cpu::StatsFromHistogram(out->histogram.data(), n, &out->mean_luma, &out->stddev_luma);
  out->sharpness = cpu::VarianceFromSums(grad.lap_sum, grad.lap_sq_sum, n);
  out->edge_density = static_cast<double>(grad.edge_count) / static_cast<double>(n);
  return absl::OkStatus();
}

}  // namespace framepipe
