// Per-pixel arithmetic of the analysis contract, shared by the CUDA kernels and host code
// (compiled by nvcc as __host__ __device__, by a C++ compiler as plain inline functions), so
// the index math and integer formulas are unit-tested on machines without a GPU.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FP_HD __host__ __device__ __forceinline__
#else
#define FP_HD inline
#endif

namespace framepipe::kernels {

inline constexpr int kThumb = 64;
inline constexpr int kEdgeThreshold2 = 64 * 64;

// BT.601 luma in the fixed point of OpenCV's 8-bit BGR2GRAY (15-bit weights summing to
// 2^15, verified equal to cv::cvtColor on all 2^24 colours): (3735 B + 19235 G + 9798 R + 2^14)
// >> 15.
FP_HD uint32_t LumaOf(uint32_t b, uint32_t g, uint32_t r) {
  return (b * 3735u + g * 19235u + r * 9798u + 16384u) >> 15;
}

// OpenCV's BORDER_REFLECT_101 for offsets of at most 1 outside [0, n).
FP_HD int Reflect101(int i, int n) {
  if (n == 1) return 0;
  if (i < 0) return -i;
  if (i >= n) return 2 * n - 2 - i;
  return i;
}

struct Gradient {
  int32_t laplacian;  // [0 1 0; 1 -4 1; 0 1 0]
  bool edge;          // Sobel gx^2 + gy^2 > 64^2
};

// The 3x3 neighbourhood of (x, y) in a luma plane (row pitch in bytes), reflect-101 borders.
FP_HD Gradient GradientAt(const uint8_t* luma, size_t pitch, int w, int h, int x, int y) {
  const int xl = Reflect101(x - 1, w), xr = Reflect101(x + 1, w);
  const uint8_t* up = luma + static_cast<size_t>(Reflect101(y - 1, h)) * pitch;
  const uint8_t* c = luma + static_cast<size_t>(y) * pitch;
  const uint8_t* dn = luma + static_cast<size_t>(Reflect101(y + 1, h)) * pitch;
  const int32_t ul = up[xl], u = up[x], ur = up[xr];
  const int32_t l = c[xl], m = c[x], r = c[xr];
  const int32_t dl = dn[xl], d = dn[x], dr = dn[xr];
  Gradient g;
  g.laplacian = u + d + l + r - 4 * m;
  const int32_t gx = (ur + 2 * r + dr) - (ul + 2 * l + dl);
  const int32_t gy = (dl + 2 * d + dr) - (ul + 2 * u + ur);
  g.edge = gx * gx + gy * gy > kEdgeThreshold2;
  return g;
}

// Thumbnail output pixel j (of 64) along an axis of n source pixels covers [j*n/64, (j+1)*n/64).
// In units of 1/64 source pixel the bounds are the integers j*n and (j+1)*n, so the overlap of
// source pixel i with it is an integer weight in [0, 64].
FP_HD int ThumbFirst(int j, int n) {
  return static_cast<int>((static_cast<int64_t>(j) * n) / kThumb);
}
FP_HD int ThumbEnd(int j, int n) {  // exclusive
  return static_cast<int>((static_cast<int64_t>(j + 1) * n + kThumb - 1) / kThumb);
}
FP_HD int64_t ThumbWeight(int i, int j, int n) {
  const int64_t lo = static_cast<int64_t>(j) * n, hi = static_cast<int64_t>(j + 1) * n;
  const int64_t a = static_cast<int64_t>(i) * kThumb, b = a + kThumb;
  const int64_t ov = (b < hi ? b : hi) - (a > lo ? a : lo);
  return ov > 0 ? ov : 0;
}
// Rounded area mean: numerator / (w*h), half up.
FP_HD uint8_t ThumbRound(uint64_t numerator, int w, int h) {
  const uint64_t area = static_cast<uint64_t>(w) * static_cast<uint64_t>(h);
  return static_cast<uint8_t>((numerator + area / 2) / area);
}

}  // namespace framepipe::kernels
