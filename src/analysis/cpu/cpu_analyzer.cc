#include "analysis/cpu/cpu_analyzer.h"

#include <algorithm>
#include <array>

#include "absl/strings/str_cat.h"
#include "analysis/cpu/luma_ops.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/combinable.h"
#include "oneapi/tbb/parallel_for.h"

namespace framepipe {
namespace {
constexpr int kBandRows = 64;
}

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
      cpu::LumaAndHistogram(frame, 0, h, luma, out->histogram.data());
    }
    grad = cpu::Gradients(*luma, 0, h);
    cpu::Thumbnail(*luma, 0, kThumbnailSize, out->thumbnail.data());
  } else {
    using Hist = std::array<uint32_t, 256>;
    oneapi::tbb::combinable<Hist> hists([] { return Hist{}; });
    oneapi::tbb::parallel_for(
        oneapi::tbb::blocked_range<int>(0, h, kBandRows),
        [&](const oneapi::tbb::blocked_range<int>& r) {
          Hist& hist = hists.local();
          if (gray) {
            cpu::Histogram(frame, r.begin(), r.end(), hist.data());
          } else {
            cpu::LumaAndHistogram(frame, r.begin(), r.end(), luma, hist.data());
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
