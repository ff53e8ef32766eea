#include "analysis/cpu/luma_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_dispatch.h"

namespace framepipe::cpu {
namespace {

inline int Reflect101(int i, int n) {
  if (n == 1) return 0;
  if (i < 0) return -i;
  if (i >= n) return 2 * n - 2 - i;
  return i;
}

// Four interleaved sub-histograms hide the store-to-load dependency of repeated bins.
void HistRow(const uint8_t* p, int n, uint32_t h[4][256]) {
  int x = 0;
  for (; x + 8 <= n; x += 8) {
    uint64_t v;
    std::memcpy(&v, p + x, 8);
    ++h[0][v & 0xFF];
    ++h[1][(v >> 8) & 0xFF];
    ++h[2][(v >> 16) & 0xFF];
    ++h[3][(v >> 24) & 0xFF];
    ++h[0][(v >> 32) & 0xFF];
    ++h[1][(v >> 40) & 0xFF];
    ++h[2][(v >> 48) & 0xFF];
    ++h[3][v >> 56];
  }
  for (; x < n; ++x) ++h[0][p[x]];
}

void MergeHist(uint32_t h[4][256], uint32_t out[256]) {
  for (int i = 0; i < 256; ++i) out[i] += h[0][i] + h[1][i] + h[2][i] + h[3][i];
}

// Sums for one interior run x in [1, w-1) of a row; all arithmetic in 32-bit lanes so the
// compiler vectorises it. Chunks of <= 4096 pixels keep the squared sum inside uint32.
FP_MULTIVERSION void InteriorRun(const uint8_t* up, const uint8_t* c, const uint8_t* dn, int x0,
                                 int x1, GradientSums* s) {
  for (int base = x0; base < x1; base += 4096) {
    const int end = std::min(x1, base + 4096);
    int32_t sum = 0;
    uint32_t sq = 0;
    int32_t edges = 0;
    for (int x = base; x < end; ++x) {
      const int32_t l = c[x - 1], r = c[x + 1], u = up[x], d = dn[x];
      const int32_t lap = u + d + l + r - 4 * static_cast<int32_t>(c[x]);
      const int32_t gx = (up[x + 1] - up[x - 1]) + 2 * (r - l) + (dn[x + 1] - dn[x - 1]);
      const int32_t gy = (dn[x - 1] + 2 * d + dn[x + 1]) - (up[x - 1] + 2 * u + up[x + 1]);
      sum += lap;
      sq += static_cast<uint32_t>(lap * lap);
      edges += (gx * gx + gy * gy) > 4096 ? 1 : 0;
    }
    s->lap_sum += sum;
    s->lap_sq_sum += sq;
    s->edge_count += static_cast<uint64_t>(edges);
  }
}

inline void BorderPixel(const uint8_t* up, const uint8_t* c, const uint8_t* dn, int x, int w,
                        GradientSums* s) {
  const int xl = Reflect101(x - 1, w), xr = Reflect101(x + 1, w);
  const int32_t lap = up[x] + dn[x] + c[xl] + c[xr] - 4 * static_cast<int32_t>(c[x]);
  const int32_t gx = (up[xr] + 2 * c[xr] + dn[xr]) - (up[xl] + 2 * c[xl] + dn[xl]);
  const int32_t gy = (dn[xl] + 2 * dn[x] + dn[xr]) - (up[xl] + 2 * up[x] + up[xr]);
  s->lap_sum += lap;
  s->lap_sq_sum += static_cast<uint64_t>(lap * lap);
  s->edge_count += (gx * gx + gy * gy) > 4096 ? 1 : 0;
}

}  // namespace

FP_MULTIVERSION void Luma(const Image& src, int y0, int y1, Image* luma) {
  const int w = src.width();
  const bool rgb = src.format() == PixelFormat::kRgb8;
  for (int y = y0; y < y1; ++y) {
    const uint8_t* p = src.row(y);
    uint8_t* out = luma->mutable_row(y);
    if (src.format() == PixelFormat::kGray8) {
      std::memcpy(out, p, static_cast<size_t>(w));
      continue;
    }
    const int bi = rgb ? 2 : 0, ri = rgb ? 0 : 2;
    for (int x = 0; x < w; ++x, p += 3) {
      const uint32_t b = p[bi], g = p[1], r = p[ri];
      out[x] = static_cast<uint8_t>((b * 3735u + g * 19235u + r * 9798u + 16384u) >> 15);
    }
  }
}

void Histogram(const Image& gray, int y0, int y1, uint32_t hist[256]) {
  alignas(64) uint32_t h[4][256];
  std::memset(h, 0, sizeof(h));
  for (int y = y0; y < y1; ++y) HistRow(gray.row(y), gray.width(), h);
  MergeHist(h, hist);
}

GradientSums Gradients(const Image& luma, int y0, int y1) {
  GradientSums s;
  const int w = luma.width(), h = luma.height();
  for (int y = y0; y < y1; ++y) {
    const uint8_t* up = luma.row(Reflect101(y - 1, h));
    const uint8_t* c = luma.row(y);
    const uint8_t* dn = luma.row(Reflect101(y + 1, h));
    BorderPixel(up, c, dn, 0, w, &s);
    if (w > 1) {
      InteriorRun(up, c, dn, 1, w - 1, &s);
      BorderPixel(up, c, dn, w - 1, w, &s);
    }
  }
  return s;
}

namespace {

// Column j of the thumbnail covers source pixels [first, last] of a row: `first` and `last`
// with overlap weights w_first and w_last (in 1/64 pixel), every pixel between them fully (64).
struct ThumbColumn {
  int32_t first, last;
  uint32_t w_first, w_last;
};

// Overlap-weighted column sums of one source row.
FP_MULTIVERSION void ThumbRow(const uint8_t* row, const ThumbColumn* cols, uint32_t* colsum) {
  for (int j = 0; j < kThumbnailSize; ++j) {
    const ThumbColumn& c = cols[j];
    if (c.first == c.last) {
      colsum[j] = c.w_first * row[c.first];
      continue;
    }
    uint32_t inner = 0;
    for (int32_t x = c.first + 1; x < c.last; ++x) inner += row[x];
    colsum[j] = c.w_first * row[c.first] + 64u * inner + c.w_last * row[c.last];
  }
}

}  // namespace

void Thumbnail(const Image& luma, int l0, int l1, uint8_t out[kThumbnailBytes]) {
  const int w = luma.width(), h = luma.height();
  constexpr int64_t kT = kThumbnailSize;
  // Output column j covers source x in [j*w/64, (j+1)*w/64); in units of 1/64 source pixel the
  // boundaries are the integers j*w, so every overlap weight is an integer.
  auto overlap = [](int64_t i, int64_t lo, int64_t hi) {
    return std::max<int64_t>(0, std::min(i * kT + kT, hi) - std::max(i * kT, lo));
  };
  ThumbColumn cols[kThumbnailSize];
  for (int64_t j = 0; j < kT; ++j) {
    const int64_t lo = j * w, hi = (j + 1) * w;
    const int64_t first = lo / kT, last = (hi - 1) / kT;
    cols[j] = {static_cast<int32_t>(first), static_cast<int32_t>(last),
               static_cast<uint32_t>(overlap(first, lo, hi)),
               static_cast<uint32_t>(overlap(last, lo, hi))};
  }
  const uint64_t area = static_cast<uint64_t>(w) * static_cast<uint64_t>(h);
  uint32_t colsum[kThumbnailSize];
  uint64_t acc[kThumbnailSize];
  for (int64_t l = l0; l < l1; ++l) {
    std::fill(acc, acc + kT, 0);
    const int64_t lo = l * h, hi = (l + 1) * h;
    for (int64_t k = lo / kT; k * kT < hi; ++k) {
      const int64_t wy = overlap(k, lo, hi);
      if (wy <= 0) continue;
      ThumbRow(luma.row(static_cast<int>(k)), cols, colsum);
      for (int j = 0; j < kT; ++j) acc[j] += static_cast<uint64_t>(wy) * colsum[j];
    }
    for (int j = 0; j < kT; ++j) {
      out[l * kT + j] = static_cast<uint8_t>((acc[j] + area / 2) / area);
    }
  }
}

void StatsFromHistogram(const uint32_t hist[256], uint64_t n, double* mean, double* stddev) {
  if (n == 0) {
    *mean = *stddev = 0;
    return;
  }
  unsigned __int128 s1 = 0, s2 = 0;
  for (int i = 0; i < 256; ++i) {
    s1 += static_cast<unsigned __int128>(i) * hist[i];
    s2 += static_cast<unsigned __int128>(i * i) * hist[i];
  }
  *mean = static_cast<double>(s1) / static_cast<double>(n);
  const unsigned __int128 num = s2 * n - s1 * s1;  // n^2 * variance, exact and >= 0
  *stddev = std::sqrt(static_cast<double>(num)) / static_cast<double>(n);
}

double VarianceFromSums(int64_t sum, uint64_t sq_sum, uint64_t n) {
  if (n == 0) return 0;
  const __int128 num = static_cast<__int128>(sq_sum) * static_cast<__int128>(n) -
                       static_cast<__int128>(sum) * static_cast<__int128>(sum);
  return static_cast<double>(num) / (static_cast<double>(n) * static_cast<double>(n));
}

void AnalyzeReference(const Image& frame, Analysis* out, Image* luma) {
  const int w = frame.width(), h = frame.height();
  const uint64_t n = static_cast<uint64_t>(w) * static_cast<uint64_t>(h);
  *luma = Image::Allocate(w, h, PixelFormat::kGray8);
  Luma(frame, 0, h, luma);
  *out = Analysis{};
  out->width = static_cast<uint32_t>(w);
  out->height = static_cast<uint32_t>(h);
  out->backend = "cpu";
  Histogram(*luma, 0, h, out->histogram.data());
  StatsFromHistogram(out->histogram.data(), n, &out->mean_luma, &out->stddev_luma);
  GradientSums g = Gradients(*luma, 0, h);
  out->sharpness = VarianceFromSums(g.lap_sum, g.lap_sq_sum, n);
  out->edge_density = static_cast<double>(g.edge_count) / static_cast<double>(n);
  Thumbnail(*luma, 0, kThumbnailSize, out->thumbnail.data());
}

}  // namespace framepipe::cpu
